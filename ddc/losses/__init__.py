"""Loss functions: each pure, float32 whatever the input dtype, its formula in its docstring.

Tested against slow numpy references in ``tests/test_losses.py`` and ``tests/test_align_losses.py``.
"""

from ddc.losses.adversarial import (binary_domain_loss, domain_accuracy, entropy_weights,  # noqa: F401
                                    gradient_reverse, grl_warmup, mdd_loss, multilinear_map,
                                    randomized_multilinear_map)
from ddc.losses.classification import classification_loss, source_cross_entropy  # noqa: F401
from ddc.losses.coral import coral  # noqa: F401
from ddc.losses.entropy import entropy, information_maximization, per_sample_entropy  # noqa: F401
from ddc.losses.mcc import mcc  # noqa: F401
from ddc.losses.pseudo_label import pseudo_label_loss, pseudo_label_mask  # noqa: F401
from ddc.losses.mmd import ESTIMATORS, KERNELS, bandwidth_base, jmmd, mmd2  # noqa: F401
