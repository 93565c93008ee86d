"""Alignment terms: one method per module, one line each in the registry below.

``TERMS[name]`` is the class of ``align.<name>`` in a config; see ``base.py`` for the contract
and README.md ("Adding a method") for a whole term file.
"""

from __future__ import annotations

import importlib

from ddc.align.base import (AlignTerm, StepInputs, TermOptions,  # noqa: F401
                            schedule_weight)

# name -> "module:Class"; imported on first use
REGISTRY = {
    "mmd": "ddc.align.mmd:MMD",
    "dan": "ddc.align.dan:DAN",
    "jmmd": "ddc.align.jmmd:JMMD",
    "coral": "ddc.align.coral:CORAL",
    "entropy": "ddc.align.entropy:Entropy",
    "im": "ddc.align.im:IM",
    "mcc": "ddc.align.mcc:MCC",
    "dann": "ddc.align.dann:DANN",
    "cdan": "ddc.align.cdan:CDAN",
    "mdd": "ddc.align.mdd:MDD",
}


def term_class(name: str) -> type:
    """The term class registered as ``name`` (KeyError for an unknown name)."""
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_terms(align: dict, *, num_classes: int, seed: int) -> list:
    """The active terms (weight > 0) of a parsed ``align`` mapping, in its order, not yet built
    (``term.build(feature_dim)`` creates their variables). Each gets its own seed."""
    active = [(name, opts) for name, opts in align.items() if opts.weight > 0]
    return [term_class(name)(opts, num_classes=num_classes, seed=seed * 100 + i)
            for i, (name, opts) in enumerate(active)]


def network_layers(align: dict) -> tuple:
    """The extra layer names the network must output for the active terms of a parsed
    ``align`` mapping (sorted, no duplicates): build the network with them, then the terms."""
    return tuple(sorted({n for t in make_terms(align, num_classes=0, seed=0) for n in t.layers()}))


def active_classes(align: dict) -> list:
    """The classes of the terms of a parsed ``align`` mapping that are active (weight > 0)."""
    return [term_class(name) for name, opts in align.items() if opts.weight > 0]


def needs_target(terms) -> bool:
    """Whether target batches must go through the network: some term (class or instance)
    needs them. The one rule for the data preparation, the input stream and the step."""
    return any(t.needs_target for t in terms)
