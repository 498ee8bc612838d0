"""create_model(pretrained=...): local files, the hub cache, heads, position embeddings, errors."""

from __future__ import annotations

import warnings

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from archbench.models import create_model
from archbench.models.pretrained import HeadResetWarning

# The hub library reads HF_HUB_CACHE when its constants are first imported; a program
# may have imported them before it sets the variable, so the loader must read it itself.
DEFAULT_HUB_CACHE = huggingface_hub.constants.HF_HUB_CACHE


def _save(model: torch.nn.Module, path, prefix: str = "") -> None:
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_archbench_file_and_checkpoint_load(tmp_path):
    torch.manual_seed(1)
    src = create_model("resnet_pico", num_classes=7).eval()
    _save(src, tmp_path / "w.safetensors")
    _save(src, tmp_path / "ckpt.safetensors", prefix="model/")
    torch.manual_seed(2)
    for name in ("w.safetensors", "ckpt.safetensors"):
        dst = create_model("resnet_pico", num_classes=7, pretrained=str(tmp_path / name)).eval()
        assert dst.pretrained_info["format"] == "archbench"
        assert _same_weights(src, dst)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(src(x), dst(x))


def test_head_of_another_class_count_is_reset_and_named(tmp_path):
    torch.manual_seed(1)
    src = create_model("resnet_pico", num_classes=1000)
    _save(src, tmp_path / "w.safetensors")
    torch.manual_seed(3)
    fresh = create_model("resnet_pico", num_classes=5)
    torch.manual_seed(3)
    with pytest.warns(HeadResetWarning, match=r"head\.bias, head\.weight"):
        dst = create_model("resnet_pico", num_classes=5, pretrained=str(tmp_path / "w.safetensors"))
    assert dst.pretrained_info["head_reset"] == ["head.bias", "head.weight"]
    assert _same_weights(src, dst, skip=("head.",))  # backbone from the file
    assert torch.equal(dst.head.weight, fresh.head.weight)  # head: the model's own init
    assert not torch.equal(dst.layer1[0].conv1.weight, fresh.layer1[0].conv1.weight)


def test_same_class_count_loads_the_head_without_warning(tmp_path):
    src = create_model("resnet_pico", num_classes=5)
    _save(src, tmp_path / "w.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst = create_model("resnet_pico", num_classes=5, pretrained=str(tmp_path / "w.safetensors"))
    assert torch.equal(dst.head.weight, src.head.weight)


def test_position_embedding_is_resized_bicubic_with_prefix_kept(tmp_path):
    torch.manual_seed(0)
    src = create_model("vit_pico", num_classes=10, img_size=32)  # 8x8 grid + cls token
    with torch.no_grad():
        src.pos_embed.normal_()
    _save(src, tmp_path / "w.safetensors")
    dst = create_model(
        "vit_pico", num_classes=10, img_size=48, pretrained=str(tmp_path / "w.safetensors")
    )
    assert dst.pretrained_info["resized"] == ["pos_embed"]
    old, new = src.pos_embed.detach(), dst.pos_embed.detach()
    assert new.shape == (1, 1 + 12 * 12, 128)
    assert torch.equal(new[:, 0], old[:, 0])  # class token's position kept
    grid = old[0, 1:].reshape(8, 8, 128).permute(2, 0, 1)[None]
    want = F.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(new[0, 1:], want[0].permute(1, 2, 0).reshape(144, 128), atol=1e-6)
    # a constant field stays constant under the resize (bicubic weights sum to one)
    with torch.no_grad():
        src.pos_embed.fill_(0.25)
    _save(src, tmp_path / "c.safetensors")
    dst = create_model(
        "vit_pico", num_classes=10, img_size=48, pretrained=str(tmp_path / "c.safetensors")
    )
    assert torch.allclose(dst.pos_embed, torch.full_like(dst.pos_embed, 0.25), atol=1e-6)


def _hub_cache(root, org: str, name: str, files: dict[str, bytes]):
    repo = root / f"models--{org}--{name}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for fname, data in files.items():
        (snap / fname).write_bytes(data)
    return snap


def test_hub_cache_loads_offline(tmp_path, monkeypatch):
    src = create_model("resnet_pico", num_classes=10)
    _save(src, tmp_path / "w.safetensors")
    cache = tmp_path / "hub"
    _hub_cache(
        cache,
        "someorg",
        "resnet_pico.test",
        {"model.safetensors": (tmp_path / "w.safetensors").read_bytes()},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dst = create_model("resnet_pico", num_classes=10, pretrained="hf-hub:someorg/resnet_pico.test")
    assert _same_weights(src, dst)
    assert dst.pretrained_info["path"].startswith(str(cache))

    with pytest.raises(ValueError, match=r"not in the hub cache.*HF_HUB_OFFLINE"):
        create_model("resnet_pico", pretrained="hf-hub:someorg/absent")
    _hub_cache(cache, "someorg", "pickled", {"pytorch_model.bin": b"\x80\x02}q\x00."})
    with pytest.raises(ValueError, match=r"only pytorch_model\.bin.*weights_only=True"):
        create_model("resnet_pico", pretrained="hf-hub:someorg/pickled")
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
        create_model("resnet_pico", pretrained="hf-hub:no-slash")


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".pt", ".ckpt"])
def test_pickled_files_are_refused_with_a_conversion_recipe(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"anything")
    with pytest.raises(ValueError, match=r"never unpickles.*weights_only=True.*save_file"):
        create_model("resnet_pico", pretrained=str(path))


def test_bad_files_fail_clearly_and_load_nothing(tmp_path):
    from archbench.models.pretrained import load_pretrained

    model = create_model("resnet_pico", num_classes=10)
    good = tmp_path / "w.safetensors"
    _save(create_model("resnet_pico", num_classes=10), good)

    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_pretrained(model, truncated)

    torch_zip = tmp_path / "z.safetensors"  # a torch.save file with the wrong suffix
    torch.save({"a": torch.zeros(1)}, torch_zip)
    with pytest.raises(ValueError, match="never unpickles"):
        load_pretrained(model, torch_zip)

    other = tmp_path / "o.safetensors"
    _save(create_model("convnext_pico", num_classes=10), other)
    with pytest.raises(ValueError, match=r"does not fit resnet_pico.*stem\.0\.weight") as err:
        load_pretrained(model, other)
    assert "missing from the checkpoint" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # one tensor of the right name but the wrong shape: named with both shapes, nothing loaded
    sd = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    save_file(sd, str(tmp_path / "s.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"layer2\.0\.conv1\.weight: checkpoint \(32, 16, 5, 5\) vs model \(32, 16, 3, 3\)",
    ):
        load_pretrained(model, tmp_path / "s.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained(model, tmp_path / "absent.safetensors")
    with pytest.raises(TypeError, match="pretrained must be"):
        load_pretrained(model, 3)  # type: ignore[arg-type]


# ----- fine-tuning: layer-wise lr decay, train --pretrained, compare's pretrained axis -----


def test_layer_decay_scales_follow_beit():
    from archbench.train import Recipe
    from archbench.train.optim import build_optimizer, param_groups, set_lr

    model = create_model("vit_pico", num_classes=10)  # 6 blocks
    decay = 0.5
    groups = param_groups(model, 0.05, layer_decay=decay)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    # BEiT: scale(i) = decay ** (depth + 1 - i); embeddings i = 0, block b i = b + 1, head depth + 1
    want = {"cls_token": decay**7, "patch_embed.proj.weight": decay**7, "norm.weight": 1.0}
    want |= {"head.weight": 1.0, "blocks.0.attn.qkv.weight": decay**6}
    want |= {"blocks.5.mlp.fc2.bias": decay**1, "blocks.2.norm1.weight": decay**4}
    params = dict(model.named_parameters())
    for name, scale in want.items():
        assert scale_of[id(params[name])] == pytest.approx(scale), name
    assert len(scale_of) == len(params)  # every parameter in exactly one group
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(params["blocks.0.attn.qkv.weight"])] == 0.05
    assert wd[id(params["blocks.0.attn.qkv.bias"])] == 0.0
    # the optimizer's per-group lr follows the schedule times the scale
    opt = build_optimizer(model, Recipe(lr=0.1, layer_decay=decay))
    set_lr(opt, 0.2)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.2 * g["lr_scale"])
    # decay 1 keeps the two plain groups
    assert [len(g) for g in param_groups(model, 0.05)] == [2, 2]
    with pytest.raises(ValueError, match="layer_decay must be in"):
        Recipe(layer_decay=0.0)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        Recipe(layer_decay=1.5)


def test_layer_decay_on_a_staged_cnn_counts_blocks():
    from archbench.train.optim import layer_ids

    model = create_model("resnet_pico", num_classes=10)  # 4 stages of one block
    ids, num_layers = layer_ids(model)
    assert num_layers == 6
    assert ids["stem.0.weight"] == 0
    assert ids["layer1.0.conv1.weight"] == 1 and ids["layer4.0.bn2.bias"] == 4
    assert ids["head.weight"] == 5


def test_train_command_starts_from_pretrained_weights(tmp_path):
    import json

    from safetensors.torch import load_file

    from archbench.cli import main

    torch.manual_seed(5)
    src = create_model("resnet_pico", num_classes=1000, img_size=16)
    _save(src, tmp_path / "w.safetensors")
    data = "shapes:n_train=16,n_val=8,n_test=8,img_size=16,num_classes=4"
    out = tmp_path / "run"
    args = ["train", "resnet_pico", "--data", data, "--epochs", "1", "--lr", "1e-12"]
    args += ["--pretrained", str(tmp_path / "w.safetensors"), "--set", "layer_decay=0.7"]
    with pytest.warns(HeadResetWarning):
        assert main([*args, "--out", str(out), "--threads", "1"]) == 0
    assert json.loads((out / "model.json").read_text())["pretrained"].endswith("w.safetensors")
    final = load_file(str(out / "checkpoints" / "last.safetensors"))
    # lr 1e-12: the trained stem is still the file's stem (not a fresh initialization)
    assert torch.allclose(final["model/stem.0.weight"], src.stem[0].weight, atol=1e-6)
    assert final["model/head.weight"].shape == (4, 128)
    # layer_decay=0.7 reached the optimizer: stem 0.7^5, the four blocks, head 1
    from safetensors import safe_open

    with safe_open(str(out / "checkpoints" / "last.safetensors"), "pt") as fh:
        groups = json.loads(fh.metadata()["optim"])["param_groups"]
    scales = sorted({round(g["lr_scale"], 6) for g in groups})
    assert scales == sorted(round(0.7**k, 6) for k in range(6))


def test_compare_spec_runs_scratch_and_pretrained_entries(tmp_path):
    from archbench.bench.compare import CompareSpec, plan_runs

    _save(create_model("resnet_pico", num_classes=1000), tmp_path / "w.safetensors")
    data = "shapes:n_train=16,n_val=8,n_test=8,img_size=16,num_classes=4"
    spec = CompareSpec(
        models=["resnet_pico", "vit_pico"],
        data=data,
        seeds=2,
        pretrained={"resnet_pico": str(tmp_path / "w.safetensors")},
    )
    runs, _ = plan_runs(spec)
    entries = sorted({r.get("entry", r["model"]) for r in runs})
    assert entries == ["resnet_pico", "resnet_pico + pretrained", "vit_pico"]
    assert len(runs) == 6 and len({r["key"] for r in runs}) == 6
    tuned = [r for r in runs if r.get("pretrained")]
    assert {r["seed"] for r in tuned} == {0, 1}
    # a spec without weights plans exactly the runs it did before (no new keys)
    plain, _ = plan_runs(CompareSpec(models=["resnet_pico"], data=data))
    assert "pretrained" not in plain[0] and "entry" not in plain[0]
    assert "layer_decay" not in plain[0]["recipe"]  # off by default: run keys unchanged
    with pytest.raises(ValueError, match="not in the comparison"):
        CompareSpec(models=["vit_pico"], pretrained={"resnet_pico": "w.safetensors"})
