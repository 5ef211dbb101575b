"""Preparing a real reference image set: resize as the authors did, CLIP embeddings for CMMD,
and a one-line stop where Inception weights are not on disk."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from harness.metrics.prepare import main


def photos(folder, n=5):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (60 + i, 40), (40 * i, 100, 200)).save(folder / f"{i:012d}.jpg")
    return folder


def test_resize_and_clip_embeddings(tmp_path, tiny_clip_dir, capsys):
    src = photos(tmp_path / "val2017")
    out = tmp_path / "ref"
    assert main(["--images", str(src), "--out", str(out), "--resolution", "32", "--num", "4", "--fid-mode", "none",
                 "--clip", str(tiny_clip_dir)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images"] == 4
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:012d}.png" for i in range(4)]
    assert Image.open(out / "images" / "000000000000.png").size == (32, 32)
    assert np.load(out / "clip_embeddings.npy").shape == (4, 16)
    assert json.loads((out / "reference.json").read_text())["clip_embeddings"].endswith("clip_embeddings.npy")


def test_missing_inception_stops_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    src = photos(tmp_path / "val2017", 2)
    assert main(["--images", str(src), "--out", str(tmp_path / "ref"), "--resolution", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pt_inception-2015-12-05-6726825d.pth" in err[0] and str(tmp_path / "torch") in err[0]


def test_missing_image_folder_is_named(tmp_path, capsys):
    assert main(["--images", str(tmp_path / "nope"), "--out", str(tmp_path / "ref")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --images={tmp_path / 'nope'}: no such folder"


def test_local_clip_embeds_images_and_prompts_alike(tiny_clip_dir):
    import torch

    from harness.metrics import clip_score
    from harness.metrics.backbones import ClipEmbedder

    clip = ClipEmbedder(tiny_clip_dir, torch.device("cpu"))
    images = clip.images([Image.new("RGB", (40, 40), (200, 10, 10))] * 2)
    texts = clip.texts(["a red square", "a painting by claude monet"])
    assert images.shape == texts.shape == (2, 16)
    assert -100 <= clip_score(images, texts) <= 100


def test_resize_policies_squash_as_the_authors_or_crop(tmp_path):
    """The authors' script squashes every image to the square (aspect ratio lost); `crop` keeps
    the aspect ratio and centre-crops. A wide image with a red left half and a blue right half
    shows the difference: squashed, both halves stay; cropped, the middle is what is left."""
    from harness.metrics.prepare import resize_folder

    src = tmp_path / "wide"
    src.mkdir()
    im = Image.new("RGB", (120, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 30, 40))  # a red quarter at the left
    im.save(src / "a.png")
    squashed = np.asarray(Image.open(resize_folder(src, tmp_path / "squash", 16, None, "squash")[0]))
    cropped = np.asarray(Image.open(resize_folder(src, tmp_path / "crop", 16, None, "crop")[0]))
    assert squashed.shape == cropped.shape == (16, 16, 3)
    assert squashed[8, 0, 0] > 200 and squashed[8, 15, 2] > 200  # the red quarter survives the squash
    assert cropped[8, 0, 0] < 50 and cropped[8, 15, 2] > 200  # the crop keeps the blue middle only
    # a folder resized by one policy is redone, not reused, when asked for the other
    again = np.asarray(Image.open(resize_folder(src, tmp_path / "squash", 16, None, "crop")[0]))
    assert np.array_equal(again, cropped)


def test_default_policy_follows_the_fid_mode(tmp_path, capsys):
    src = photos(tmp_path / "val2017", 1)
    assert main(["--images", str(src), "--out", str(tmp_path / "a"), "--resolution", "16", "--fid-mode", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["resize"] == "squash"
    assert main(["--images", str(src), "--out", str(tmp_path / "b"), "--resolution", "16", "--fid-mode", "none",
                 "--resize", "crop"]) == 0
    assert json.loads(capsys.readouterr().out)["resize"] == "crop"
