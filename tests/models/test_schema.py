"""The model schema (DESIGN.md, "Model contract"): every model class declares the
constructor arguments that carry its width (``width_args``) and its depth
(``depth_args``).

Every registered variant is checked on the ``meta`` device: the declaration exists and
names real constructor arguments that the builder recorded. One variant per family (its
CPU variant) is then rescaled: multiplying every width argument by 1.5 must change the
parameters of every stage (``feature_info`` module), not only the stem, and doubling
every depth argument must change the parameter count.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from archbench.models import ImageClassifier, create_model, get_model_card, list_models

ALL = list_models()
NUM_CLASSES = 10

# Classes with no depth argument, and why (their depth_args are empty on purpose).
NO_DEPTH_ARGS = {
    "AllConvNet": "All-CNN-C is one fixed table of nine convolutions",
    "KANVGG": "the length of each entry of `stages` (a width argument) is the depth",
    "FlatNet": "the length of `hidden` (a width argument) is the depth",
}


def _layer(path: str) -> str:
    return path.rsplit(".", 1)[1]


# Feature-map modules that hold no parameters (identity markers, reshapes) and whose
# parents hold none either: the modules that compute each such stage, by class.
PARAMETER_FREE_FEATURES = {
    # to_map only unflattens the trunk's output
    "FlatNet": lambda path: ("trunk",),
    # block_outputs.i marks the tokens blocks.i passes on (its prompts split off)
    "TransHP": lambda path: (f"blocks.{_layer(path)}",),
    # layer_outputs.i marks layer i of the one weight-shared block (attn, moe) and its norms
    "WideNet": lambda path: ("attn", "moe", f"norms1.{_layer(path)}", f"norms2.{_layer(path)}"),
}

# Arguments that must follow the depths (one entry per block), rebuilt for doubled depths.
DEPTH_COMPANIONS = {
    "UniRepLKNet": lambda args: (
        {}
        if args["kernel_sizes"] is None
        else {"kernel_sizes": tuple(tuple(ks) * 2 for ks in args["kernel_sizes"])}
    ),
}


def _one_per_family() -> list[str]:
    """One variant per family: its first CPU variant, else its first variant."""
    chosen: dict[str, tuple[bool, str]] = {}
    for name in ALL:
        card = get_model_card(name)
        key = (card.scale != "cpu", name)
        if card.family not in chosen or key < chosen[card.family]:
            chosen[card.family] = key
    return sorted(name for _, name in chosen.values())


FAMILIES = _one_per_family()


def _meta(name: str, **kwargs) -> ImageClassifier:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _declared_here(cls: type, attr: str) -> bool:
    """``attr`` is set by the class or a model base, not inherited from ImageClassifier."""
    return any(attr in vars(c) for c in cls.__mro__ if c is not ImageClassifier)


@pytest.mark.parametrize("name", ALL)
def test_schema_is_declared_and_names_constructor_arguments(name):
    model = _meta(name)
    cls = type(model)
    assert _declared_here(cls, "width_args"), f"{cls.__name__} declares no width_args"
    assert _declared_here(cls, "depth_args"), f"{cls.__name__} declares no depth_args"
    assert isinstance(cls.width_args, tuple) and cls.width_args, cls.__name__
    assert isinstance(cls.depth_args, tuple), cls.__name__
    if not cls.depth_args:
        assert cls.__name__ in NO_DEPTH_ARGS, f"{cls.__name__}: depth_args = () needs a reason"
    assert not set(cls.width_args) & set(cls.depth_args)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for arg in cls.width_args + cls.depth_args:
        assert arg in accepted, f"{cls.__name__}.{arg} is not a constructor argument"
        assert arg in model.build_args, f"{name}: {arg} missing from build_args"


def _scale(value, factor: float, multiple: int):
    """``value`` x ``factor``: ints to a multiple of ``multiple``, floats exactly, tuples
    and lists element-wise; None (an optional layer left out) stays None."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_scale(v, factor, multiple) for v in value)
    if isinstance(value, float):
        return value * factor
    return max(multiple, round(value * factor / multiple) * multiple)


def _ints(value) -> list[int]:
    if isinstance(value, (tuple, list)):
        return [i for v in value for i in _ints(v)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def _widened(name: str, model: ImageClassifier, factor: float) -> ImageClassifier:
    """``name`` with every width argument x ``factor``. Integer widths are rounded to a
    multiple of 8, or of 16, 32 or 8 x the heads count where a family needs its widths
    to divide heads or groups."""
    args = model.build_args
    heads = {h for key in ("num_heads", "heads") for h in _ints(args.get(key))}
    multiples = [8, 16, 32, *sorted(math.lcm(8, h) for h in heads if h > 1)]
    errors = []
    for multiple in dict.fromkeys(multiples):
        kwargs = {k: _scale(args[k], factor, multiple) for k in type(model).width_args}
        try:
            return _meta(name, num_classes=NUM_CLASSES, **kwargs)
        except ValueError as err:
            errors.append(f"multiple {multiple}: {err}")
    pytest.fail(f"{name}: no rounding of the widths x {factor} builds: {errors}")


def _params_under(model: torch.nn.Module, path: str) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if n == path or n.startswith(path + ".")
    )


def _stage_params(model: ImageClassifier) -> dict[str, int]:
    """Parameters of each stage: under its feature_info module, else under the nearest
    enclosing module that holds some (a parameter-free pooling or norm-less output inside
    a stage container), else under the modules PARAMETER_FREE_FEATURES names."""
    counts = {}
    cls = type(model).__name__
    for info in model.feature_info:
        path = info.module
        while not _params_under(model, path) and "." in path:
            path = path.rsplit(".", 1)[0]
        counts[info.module] = _params_under(model, path)
        if not counts[info.module] and cls in PARAMETER_FREE_FEATURES:
            paths = PARAMETER_FREE_FEATURES[cls](info.module)
            counts[info.module] = sum(_params_under(model, p) for p in paths)
        assert counts[info.module], (
            f"{cls}: no parameters under stage {info.module} or its parents; say in "
            "PARAMETER_FREE_FEATURES which modules compute it"
        )
    return counts


@pytest.mark.parametrize("name", FAMILIES)
def test_scaling_width_args_widens_every_stage(name):
    base = _meta(name, num_classes=NUM_CLASSES)
    wide = _widened(name, base, 1.5)
    before, after = _stage_params(base), _stage_params(wide)
    assert list(before) == list(after), "scaling the widths changed the stage layout"
    unchanged = [stage for stage in before if before[stage] == after[stage]]
    assert not unchanged, f"{name}: width_args leave stages {unchanged} as they are"
    for child, _ in base.named_children():
        n = _params_under(base, child)
        if n:
            assert _params_under(wide, child) > n, f"{name}: {child} did not grow"
    assert [f.num_chs for f in wide.feature_info] != [f.num_chs for f in base.feature_info]


def _doubled(value):
    if isinstance(value, (tuple, list)):
        return type(value)(_doubled(v) for v in value)
    return 2 * value


@pytest.mark.parametrize("name", FAMILIES)
def test_scaling_depth_args_changes_the_parameter_count(name):
    base = _meta(name, num_classes=NUM_CLASSES)
    cls = type(base)
    if not cls.depth_args:
        pytest.skip(f"{cls.__name__} has no depth argument: {NO_DEPTH_ARGS[cls.__name__]}")
    kwargs = {k: _doubled(base.build_args[k]) for k in cls.depth_args}
    if cls.__name__ in DEPTH_COMPANIONS:
        kwargs.update(DEPTH_COMPANIONS[cls.__name__](base.build_args))
    deep = _meta(name, num_classes=NUM_CLASSES, **kwargs)
    params = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in deep.parameters()) > params
