"""Model builders: `build_model("wrn-40-2")`, `build_model("tf-cnn")`; WRNs are also timm models."""
from __future__ import annotations

import numbers
import re

from torch import nn

from opswap.models.tfcnn import TFCNN
from opswap.models.wrn import PositionSpec, WideResNet, WRNBlock

__all__ = ["build_model", "list_models", "INPUT_SIZE", "check_image_size", "WideResNet", "WRNBlock", "TFCNN", "PositionSpec"]

_WRN = re.compile(r"^wrn[-_](\d+)[-_](\d+)$")
# Names shown in listings and registered with timm; any valid wrn-<6n+4>-<k> builds.
_LISTED_WRN = [(10, 1), (16, 1), (16, 2), (16, 4), (16, 8), (22, 2), (28, 2), (28, 10), (40, 1), (40, 2), (40, 4)]


def list_models() -> list[str]:
    """Model names with a fixed listing (any `wrn-<6n+4>-<k>` is accepted too)."""
    return [f"wrn-{d}-{k}" for d, k in _LISTED_WRN] + ["tf-cnn"]


# Names are checked before anything is allocated: a typo such as wrn-100000-1 must not hang a
# study's validation or exhaust memory. 1e9 parameters is 4 GiB of fp32 weights.
MAX_PARAMS = 1_000_000_000
MAX_CLASSES = 1_000_000


# Every model built by name takes CIFAR-sized images: the WRN position table (resolutions, MACs)
# and tf-cnn's classifier (64·4·4 inputs) are fixed by it.
INPUT_SIZE = (3, 32, 32)


def check_image_size(image_size: tuple[int, int], where: str = "") -> None:
    """Refuse images of another (height, width) than `INPUT_SIZE`, naming `where` they come from."""
    h, w = (int(d) for d in image_size)
    if (h, w) != INPUT_SIZE[1:]:
        raise ValueError(f"{where + ': ' if where else ''}images are {h}x{w}, but opswap's models (WRN, tf-cnn) take "
                         f"{INPUT_SIZE[1]}x{INPUT_SIZE[2]} images; resize them to {INPUT_SIZE[1]}x{INPUT_SIZE[2]} "
                         "first (dataset 'folder' resizes its images on load)")


def _wrn_params(depth: int, widen: int, num_classes: int) -> int:
    """The 3×3 convolutions and the classifier of WRN-depth-widen (the bulk of its parameters)."""
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    convs = sum(9 * (widths[s] * widths[s + 1] + widths[s + 1] ** 2 + (n - 1) * 2 * widths[s + 1] ** 2)
                for s in range(3))
    return convs + widths[3] * num_classes


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by name: `wrn-<depth>-<widen>` (depth = 6n+4) or `tf-cnn`."""
    key = name.strip().lower()
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) \
            or not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be an integer in 2..{MAX_CLASSES:,}, got {num_classes!r}")
    if key in ("tf-cnn", "tf_cnn", "tfcnn"):
        return TFCNN(num_classes, **kwargs)
    m = _WRN.match(key)
    if m:
        depth, widen = int(m.group(1)), int(m.group(2))
        if depth < 10 or (depth - 4) % 6 or widen < 1:
            raise ValueError(
                f"unknown model {name!r}: a WRN needs depth = 6n+4 (10, 16, 22, 28, 40, ...) and "
                f"widen >= 1, e.g. 'wrn-40-2'")
        params = _wrn_params(depth, widen, num_classes)
        if params > MAX_PARAMS:
            raise ValueError(f"model {name!r} would have about {params:.2g} parameters ({4 * params / 2**30:,.0f} GiB "
                             f"in fp32), over the {MAX_PARAMS:.0e} this builds by name; e.g. 'wrn-28-10' has 36.5M. "
                             "Build opswap.models.WideResNet(depth, widen) directly for such a network")
        return WideResNet(depth, widen, num_classes, **kwargs)
    raise ValueError(
        f"unknown model {name!r}: valid names are 'wrn-<depth>-<widen>' with depth = 6n+4 "
        f"(e.g. {', '.join(repr(n) for n in list_models()[:4])}, ...) and 'tf-cnn'")


def _register_with_timm() -> None:
    """Register wrn_<d>_<k> builders with timm, so `timm.create_model("wrn_40_2")` works."""
    try:
        from timm import is_model
        from timm.models import register_model
    except ImportError:  # timm is a dependency, but the models must not need it
        return

    def make(depth: int, widen: int):
        def builder(pretrained: bool = False, num_classes: int = 10, **kwargs) -> WideResNet:
            if pretrained:
                raise ValueError("opswap WRNs have no pretrained weights")
            kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
            kwargs.pop("cache_dir", None)
            return WideResNet(depth, widen, num_classes, **kwargs)

        builder.__name__ = f"wrn_{depth}_{widen}"
        builder.__module__ = __name__
        builder.__doc__ = f"WRN-{depth}-{widen} (opswap, pre-activation, CIFAR 32x32)."
        return builder

    for depth, widen in _LISTED_WRN:
        if not is_model(f"wrn_{depth}_{widen}"):
            register_model(make(depth, widen))


_register_with_timm()
