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
    "pseudo_label": "ddc.align.pseudo_label:PseudoLabel",
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


def network_layers(align_or_terms) -> tuple:
    """The extra layer names the network must output (sorted, no duplicates) for a list of
    terms, or for the active terms of a parsed ``align`` mapping (so the network can be built
    before the terms, which need its feature width)."""
    terms = align_or_terms
    if isinstance(align_or_terms, dict):
        terms = make_terms(align_or_terms, num_classes=0, seed=0)
    return tuple(sorted({n for t in terms for n in t.layers()}))


def active_classes(align: dict) -> list:
    """The classes of the terms of a parsed ``align`` mapping that are active (weight > 0)."""
    return [term_class(name) for name, opts in align.items() if opts.weight > 0]


def needs_target(terms) -> bool:
    """Whether target batches must go through the network: some term (class or instance)
    needs them. The one rule for the data preparation, the input stream and the step."""
    return any(t.needs_target for t in terms)


def terms_for(spec: dict, *, feature_dim: int, num_classes: int, seed: int = 0) -> list:
    """Built terms from a plain ``align`` mapping (``{"mmd": {"weight": 1.0}}``), for using the
    step without a whole config (tests, notebooks). Options are parsed as in a config."""
    from ddc.config.parse import parse_align
    terms = make_terms(parse_align({"align": spec}), num_classes=num_classes, seed=seed)
    for term in terms:
        term.build(feature_dim)
    return terms
