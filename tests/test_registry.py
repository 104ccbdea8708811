"""The one registry shape (losses, conditionings, layouts) and the one dtype check."""

from __future__ import annotations

import pytest
import torch

from inspo.conditioning import CONDITIONINGS, InSPOConditioning
from inspo.errors import ConfigError
from inspo.layout import LAYOUTS, PackedLayout, SeparateLayout
from inspo.losses import LOSSES, DPOLoss
from inspo.models import torch_dtype
from inspo.module import PreferenceModule


@pytest.mark.parametrize(("registry", "kind"), [(LOSSES, "loss"), (CONDITIONINGS, "conditioning"),
                                                (LAYOUTS, "layout")])
def test_an_unknown_name_is_one_line_listing_every_registered_name(registry, kind):
    with pytest.raises(ConfigError) as info:
        registry.resolve("nope")
    assert str(info.value) == f"unknown {kind} 'nope'; choose one of: {', '.join(sorted(registry))}"


def test_resolve_takes_an_instance_a_short_name_or_a_class_path():
    packed = PackedLayout(64)
    assert LAYOUTS.resolve(packed) is packed
    assert type(LAYOUTS.resolve("separate")) is SeparateLayout
    for path in ("inspo.layout.PackedLayout", "packed"):  # a short name also works as a class_path
        layout = LAYOUTS.resolve({"class_path": path, "init_args": {"max_tokens_per_row": 32}})
        assert type(layout) is PackedLayout and layout.max_tokens_per_row == 32
    assert LOSSES.resolve({"class_path": "inspo.losses.dpo.DPOLoss", "init_args": {"beta": 0.2}}).beta == 0.2


@pytest.mark.parametrize(("value", "message"), [
    ({"class_path": "inspo.layout.NoSuchLayout"}, "layout class_path 'inspo.layout.NoSuchLayout' cannot be imported"),
    ({"class_path": "inspo.losses.dpo.DPOLoss"}, "layout class_path 'inspo.losses.dpo.DPOLoss' is not a Layout"),
    ({"class_path": "packed", "init_args": {"max_tokens": 3}}, "layout PackedLayout: "),
    (3, "layout must be a short name (packed, separate) or a class_path, got 3"),
])
def test_a_bad_class_path_is_one_config_error(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LAYOUTS.resolve(value)


def test_hparams_are_a_short_name_for_stock_components_else_a_class_path():
    """Checkpoints of stock configs keep reading ``layout: packed`` / ``conditioning: inspo`` as before."""
    assert LAYOUTS.hparams(PackedLayout()) == "packed" and CONDITIONINGS.hparams(InSPOConditioning()) == "inspo"
    saved = LAYOUTS.hparams(PackedLayout(512))
    assert saved == {"class_path": "inspo.layout.PackedLayout", "init_args": {"max_tokens_per_row": 512}}
    assert LAYOUTS.resolve(saved).max_tokens_per_row == 512


def test_register_refuses_a_taken_name_and_accepts_a_reimport():
    class Impostor(SeparateLayout):
        pass

    with pytest.raises(ValueError, match="layout name 'packed' is already registered to PackedLayout"):
        LAYOUTS.register("packed")(Impostor)
    assert LAYOUTS["packed"] is PackedLayout and LAYOUTS.register("packed")(PackedLayout) is PackedLayout
    assert LAYOUTS.name_of(Impostor) is None and LAYOUTS.name_of(PackedLayout) == "packed"


def test_dtype_names_are_checked_in_one_place():
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    message = "unknown model.dtype 'bf17'; choose one of: bf16, bfloat16, float16, float32, fp16, fp32"
    with pytest.raises(ConfigError, match=message):
        PreferenceModule(dtype="bf17")
    with pytest.raises(ConfigError, match="unknown dtype 'int8'; choose one of: bf16"):
        from inspo.models import load_causal_lm

        load_causal_lm("unused", dtype="int8")


def test_module_components_by_instance_name_or_class_path_and_their_saved_form():
    module = PreferenceModule(loss=DPOLoss(beta=0.2), conditioning=InSPOConditioning(), layout=PackedLayout(256))
    assert module.hparams["conditioning"] == "inspo"
    assert module.hparams["layout"] == {"class_path": "inspo.layout.PackedLayout",
                                        "init_args": {"max_tokens_per_row": 256}}
    again = PreferenceModule(**{k: module.hparams[k] for k in ("loss", "conditioning", "layout")})
    assert again.layout.max_tokens_per_row == 256 and again.loss.beta == 0.2 and again.conditioning.name == "inspo"


def test_an_alias_resolves_to_its_component_and_is_saved_under_the_registered_name():
    """TRL's ``sigmoid`` is our ``dpo``: same class from every entry point, listed and saved once, as ``dpo``."""
    assert LOSSES.lookup("sigmoid") is DPOLoss and type(LOSSES.resolve("sigmoid")) is DPOLoss
    assert LOSSES.resolve({"class_path": "sigmoid", "init_args": {"beta": 0.3}}).beta == 0.3
    assert LOSSES.class_path("sigmoid") == {"class_path": "inspo.losses.dpo.DPOLoss"}
    assert "sigmoid" not in LOSSES and LOSSES.name_of(DPOLoss) == "dpo"
    assert LOSSES.hparams(LOSSES.resolve("sigmoid")) == "dpo"


def test_an_alias_may_not_take_a_registered_name_nor_a_name_take_an_alias():
    class Impostor(DPOLoss):
        pass

    with pytest.raises(ValueError, match="loss name 'hinge' is already registered to HingeLoss"):
        LOSSES.register("impostor", aliases=("hinge",))(Impostor)
    with pytest.raises(ValueError, match="loss name 'sigmoid' is already registered to DPOLoss"):
        LOSSES.register("sigmoid")(Impostor)
    assert "impostor" not in LOSSES and "sigmoid" not in LOSSES
