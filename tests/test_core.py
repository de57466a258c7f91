"""Config, charset, metrics, preprocessing and the network: the pieces below the training loop."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_ml import config, metrics
from captcha_ml.charset import Charset, LabelError, best_path_in_lengths, ctc_align
from captcha_ml.config import ConfigError
from captcha_ml.data.transforms import (TTA_VIEWS, ImageError, Preprocess, average_views,
                                        load_image, view)
from captcha_ml.model import CaptchaNet, load_imagenet


def test_config_layers_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  epochs: 3\ndata:\n  height: 32\n")
    cfg = config.load(path, ["train.lr=0.5", "data.augment=true model.depth=layer4"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.height) == (0.5, 3, 32)
    assert cfg.data.augment is True and cfg.model.depth == "layer4"
    assert cfg.flat()["train.lr"] == 0.5
    # A value may hold spaces (a folder named "my data"), alone or among other overrides.
    cfg = config.load(None, ["data.train=/my data/train.csv", " train.lr=0.5  "
                             "data.valid=/my data/v 2.csv train.epochs=2 "])
    assert (cfg.data.train, cfg.data.valid) == ("/my data/train.csv", "/my data/v 2.csv")
    assert (cfg.train.lr, cfg.train.epochs) == (0.5, 2)
    with pytest.raises(ConfigError, match="'lr' is not of the form"):
        config.load(None, ["lr"])


def test_config_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'.*train.lr"):
        config.load(None, ["train.learning_rate=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        config.load(bad)


def test_config_extends_a_base_file(tmp_path):
    """`extends: BASE` loads the base's keys first (a path relative to the file, chained);
    the file's own keys and then the overrides win. A missing base or a loop is a ConfigError
    naming the file."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text("train:\n  lr: 0.1\n  epochs: 3\n"
                                                 "data:\n  height: 32\n")
    (tmp_path / "base" / "mid.yaml").write_text("extends: root.yaml\ntrain:\n  epochs: 5\n")
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text("extends: base/mid.yaml  # a comment\ndata:\n  width: 96\n")
    cfg = config.load(leaf, ["train.lr=0.5"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.height, cfg.data.width) == (0.5, 5, 32, 96)
    assert config.load(tmp_path / "base" / "mid.yaml").train.lr == 0.1
    leaf.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist .named by .*leaf.yaml"):
        config.load(leaf)
    (tmp_path / "base" / "root.yaml").write_text("extends: ../leaf.yaml\n")
    leaf.write_text("extends: base/mid.yaml\n")
    with pytest.raises(ConfigError, match="'extends' loops back"):
        config.load(leaf)
    leaf.write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="one config file's path"):
        config.load(leaf)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=two", "expected int"),
    ("data.channels=2", "data.channels=2"),
    ("model.depth=layer9", "layer2, layer3 or layer4"),
    ("data.min_len=6", "min <= max"),
    ("data.augment_strength=0", "augment_strength"),
    ("data.augment_lines=1.5", "augment_lines"),
    ("data.augment_colours=-0.1", "augment_colours"),
    ("data.crop=0.5,0,0.4,1", "left < right"),
    ("data.crop=0.1,0.2", "give 4 shares"),
    ("data.crop=a,b,c,d", "expected a list of numbers"),
    ("train.freeze=layer2", "train.freeze='layer2'"),
])
def test_config_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, [override])


def test_broken_yaml_names_the_file_and_the_place(tmp_path):
    """A hand-edited config, fit.yaml or style file with a YAML slip: a ConfigError with the
    file, the line and the fix, not a parser traceback."""
    from captcha_ml.data import synthetic
    from captcha_ml.fit.configs import read_fit_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-3\n epochs: 3\n")  # one space short
    for read in (config.load, read_fit_yaml, synthetic.load_style):
        with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line 3.*fix the file"):
            read(bad)
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping.*got list"):
        synthetic.load_style(bad)


def test_write_text_leaves_the_old_file_whole_when_interrupted(tmp_path, monkeypatch):
    from captcha_ml import files

    target = tmp_path / "fit.yaml"
    assert files.write_text(target, "a: 1\n").read_text() == "a: 1\n"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_text(target, "a: 2\n")
    assert target.read_text() == "a: 1\n" and [p.name for p in tmp_path.iterdir()] == ["fit.yaml"]


def test_config_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_charset_encode_decode_and_ctc_collapse():
    cs = Charset("abc")
    assert cs.encode("cab") == [3, 1, 2]
    assert cs.num_classes == 4
    # frames: a a _ a b b _ -> "aab"
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().mul(10).log_softmax(-1)
    texts, conf = cs.ctc_decode(log_probs)
    assert texts == ["aab"] and 0.99 < conf[0] <= 1.0
    assert cs.ctc_decode(log_probs.numpy()) == (texts, conf)  # the ONNX path hands numpy
    with pytest.raises(LabelError, match="'z'.*not in the charset"):
        cs.encode("az")
    assert Charset("ab", case_sensitive=False).encode("AB") == [1, 2]
    assert Charset.from_labels(["ba", "ca"]).symbols == "abc"


def test_decoding_keeps_texts_in_the_trained_lengths():
    """A greedy text of the wrong length is replaced by the most probable path whose text has
    an allowed length (checked against every path of small random outputs); texts already in
    range, and charsets without lengths, decode greedily; lengths survive to_dict."""
    cs = Charset("ab", lengths=(3, 3))
    # greedy: a a _ b -> "ab" (2); the second-best token of frame 1 is b: a b _ b -> "abb"
    lp = torch.tensor([[[0.0, 9, 0], [0, 5, 4], [9, 0, 0], [0, 0, 9]]]).log_softmax(-1)
    assert Charset("ab").ctc_decode(lp)[0] == ["ab"]
    texts, conf = cs.ctc_decode(lp)
    path_logp = lp[0, [0, 1, 2, 3], [1, 2, 0, 2]].sum()
    assert texts == ["abb"] and conf[0] == pytest.approx(math.exp(path_logp), rel=1e-5)
    assert Charset("ab", lengths=(1, 2)).ctc_decode(lp) == Charset("ab").ctc_decode(lp)
    rng = np.random.default_rng(0)
    for _ in range(60):
        steps, classes = int(rng.integers(2, 7)), int(rng.integers(2, 4))
        logp = np.log(rng.dirichlet(np.ones(classes), size=steps))
        low = int(rng.integers(1, 4))
        high = low + int(rng.integers(0, 2))
        best = max(((sum(logp[t, k] for t, k in enumerate(p)), p)
                    for p in itertools.product(range(classes), repeat=steps)
                    if low <= len([k for i, k in enumerate(p) if k and (i == 0 or k != p[i - 1])])
                    <= high), default=(None, None))
        path, score = best_path_in_lengths(logp, low, high)
        if best[0] is None:
            assert path is None
        else:
            assert score == pytest.approx(best[0]) and score == pytest.approx(
                sum(logp[t, k] for t, k in enumerate(path)))
    assert Charset.from_dict(cs.to_dict()) == cs and Charset.from_dict({"symbols": "ab"}).lengths == ()
    with pytest.raises(ValueError, match="min <= max"):
        Charset("ab", lengths=(4, 3))


def test_ctc_align_places_each_symbol_of_a_given_label():
    """Forced alignment finds each symbol's steps where the model puts it, for the label it is
    given even where the model reads another; None where the steps cannot hold the label."""
    lp = np.full((10, 3), np.log(0.05))
    lp[:, 0] = np.log(0.9)  # blank everywhere but at the peaks
    for t, k in [(2, 1), (3, 1), (6, 2), (8, 1)]:
        lp[t] = np.log(0.05)
        lp[t, k] = np.log(0.9)
    assert ctc_align(lp, [1, 2, 1]) == [(2, 3), (6, 6), (8, 8)]
    assert Charset("ab").ctc_decode(lp[None])[0] == ["aba"]
    forced = ctc_align(lp, [2, 1])  # a label the model does not read: still placed, in order
    assert len(forced) == 2 and forced[0][1] < forced[1][0]
    # A repeated symbol needs a blank between its copies: 2 steps cannot hold "aa", 3 can.
    assert ctc_align(lp[:2], [1, 1]) is None and ctc_align(lp[:3], [1, 1]) == [(0, 0), (2, 2)]
    assert ctc_align(lp[:2], [1, 2]) == [(0, 0), (1, 1)] and ctc_align(lp, []) is None


def test_metrics():
    s = metrics.summary(["abc", "abd", "ab"], ["abc", "abc", "abc"])
    assert s["seq_acc"] == pytest.approx(1 / 3)
    assert s["cer"] == pytest.approx(2 / 9)
    assert s["char_acc"] == pytest.approx(7 / 9)
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.per_position_accuracy(["abd"], ["abc"]) == [1.0, 1.0, 0.0]
    assert metrics.confusions(["abd"], ["abc"]) == {("c", "d"): 1}


def test_preprocess_any_mode_and_size():
    pre = Preprocess(height=20, width=40, channels=1)
    for mode in ("RGBA", "P", "L", "RGB", "1", "I;16"):
        x = pre(Image.new(mode, (73, 31)))
        assert x.shape == (1, 20, 40) and x.dtype == torch.float32
    assert Preprocess(height=20, width=40, channels=3)(Image.new("L", (5, 5))).shape == (3, 20, 40)
    white = pre(Image.new("L", (40, 20), 255))
    assert torch.allclose(white, torch.ones_like(white))


def test_preprocess_crop_keeps_a_share_of_any_size(tmp_path):
    """A black block in the left 10% of the image: a crop from 20% leaves it out, a crop of the
    left 10% is all of it, at any source size; the crop survives to_dict / from_dict, a YAML
    list and a command-line override, and old dicts without it read as no crop."""
    for size in ((100, 40), (333, 71)):
        img = Image.new("L", size, 255)
        img.paste(0, (0, 0, size[0] // 10, size[1]))
        right = Preprocess(height=20, width=40, crop=(0.2, 0.0, 1.0, 1.0))
        left = Preprocess(height=20, width=40, crop=(0.0, 0.0, 0.09, 1.0))
        assert torch.all(right(img) == 1) and torch.all(left(img) == -1)
        assert not torch.all(Preprocess(height=20, width=40)(img) == 1)
    assert Preprocess.from_dict(right.to_dict()) == right
    assert Preprocess.from_dict({"height": 20, "width": 40}).crop == ()
    with pytest.raises(ValueError, match="left < right"):
        Preprocess(crop=(0.5, 0, 0.2, 1))
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  crop: [0.1, 0, 0.9, 1]\n")
    assert config.load(path).data.crop == [0.1, 0.0, 0.9, 1.0]
    assert config.load(path, ["data.crop="]).data.crop == []
    assert config.load(None, ["data.crop=0,0.1,1,0.9"]).data.crop == [0.0, 0.1, 1.0, 0.9]


def test_test_time_views_move_zoom_and_average():
    """A dot moves with a view's shift and away from the centre under its zoom; the first view
    is the image as it is; averaging views is the log of their mean probabilities."""
    img = Image.new("L", (100, 40), 255)
    img.putpixel((70, 20), 0)
    def dark(im):  # noqa: E306
        return [(x, y) for x in range(100) for y in range(40) if im.getpixel((x, y)) < 128]
    assert dark(view(img, 1.0, 0.0, 0.0)) == [(70, 20)]
    assert dark(view(img, 1.0, 0.1, 0.0)) == [(80, 20)]
    assert dark(view(img, 1.0, 0.0, -0.25)) == [(70, 10)]
    assert all(x > 70 for x, _ in dark(view(img, 1.2, 0.0, 0.0)))  # right of the centre
    pre = Preprocess(height=20, width=50, tta=True)
    x = pre.read(img.convert("RGB"))
    assert x.shape == (len(TTA_VIEWS), 1, 20, 50) and TTA_VIEWS[0] == (1.0, 0.0, 0.0)
    assert torch.equal(x[0], Preprocess(height=20, width=50)(img))
    assert Preprocess(height=20, width=50).read(img).shape == (1, 1, 20, 50)
    lp = torch.randn(4, 3, 5).log_softmax(-1)
    assert torch.equal(average_views(lp, 1), lp)
    mean = average_views(lp, 2)
    assert mean.shape == (2, 3, 5)
    assert torch.allclose(mean.exp(), (lp[0::2].exp() + lp[1::2].exp()) / 2, atol=1e-6)


def test_load_image_errors_name_the_input(tmp_path):
    with pytest.raises(ImageError, match="nothere.png: cannot open"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(ImageError, match="upload: not a readable image"):
        load_image(b"definitely not a png", name="upload")
    buf = io.BytesIO()
    Image.new("L", (50, 50)).save(buf, "PNG")
    with pytest.raises(ImageError, match="truncated.png: not a readable image"):
        load_image(buf.getvalue()[:60], name="truncated.png")


def test_load_image_refuses_decompression_bombs(monkeypatch):
    from captcha_ml.data import transforms
    monkeypatch.setattr(transforms, "MAX_PIXELS", 100 * 100)
    buf = io.BytesIO()
    Image.new("L", (200, 200)).save(buf, "PNG")
    with pytest.raises(ImageError, match="above the limit"):
        load_image(buf.getvalue(), name="bomb")


def test_transparent_images_composite_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(img).convert("L").getpixel((0, 0)) == 255


def test_deep_and_other_colour_modes_read_as_eight_bit(tmp_path):
    """16-bit greyscale PNGs, 32-bit and float TIFFs and CMYK JPEGs read as the same dark
    text on a light ground an 8-bit file holds (Pillow's own conversion clips 16-bit values
    to white)."""
    grey = np.full((20, 40), 230, np.uint8)
    grey[5:15, 10:30] = 30
    want = Image.fromarray(grey, "L")
    deep = {
        "a.png": Image.fromarray(grey.astype(np.uint16) * 257),  # I;16 (or I) when read back
        "b.tif": Image.fromarray(grey.astype(np.int32) * 257, "I"),
        "c.tif": Image.fromarray(grey.astype(np.float32) / 255, "F"),
        "d.jpg": want.convert("RGB").convert("CMYK"),
    }
    for name, img in deep.items():
        img.save(tmp_path / name, quality=95) if name.endswith("jpg") else img.save(tmp_path / name)
        got = np.asarray(load_image(tmp_path / name).convert("L"), dtype=int)
        assert np.abs(got - grey).max() <= (16 if name.endswith("jpg") else 2), name  # JPEG's edges


@pytest.mark.parametrize("depth", ["layer2", "layer3", "layer4"])
@pytest.mark.parametrize("size", [(50, 200), (30, 90), (80, 300)])
def test_model_output_positions(depth, size):
    h, w = size
    net = CaptchaNet(num_classes=20, in_channels=1, depth=depth).eval()
    out = net(torch.randn(2, 1, h, w))
    assert out.shape == (2, net.output_length(w), 20)
    assert net.output_length(200) == 25  # enough CTC steps for long labels with repeats
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, out.shape[1]), atol=1e-5)


def test_model_depth_sets_width_and_size():
    sizes = {d: sum(p.numel() for p in CaptchaNet(20, 1, d).parameters()) for d in
             ("layer2", "layer3", "layer4")}
    assert sizes["layer2"] < 1e6 < sizes["layer3"] < 3e6 < sizes["layer4"]
    assert CaptchaNet(20, 1, "layer2").classifier.in_features == 128
    with pytest.raises(ValueError, match="layer2, layer3, layer4"):
        CaptchaNet(20, 1, "layer1")


def test_freeze_keeps_the_first_stages_as_they_were():
    torch.manual_seed(0)
    net = CaptchaNet(num_classes=6, in_channels=1, depth="layer2").freeze("layer1")
    frozen = {k: v.clone() for k, v in net.features[:5].state_dict().items()}
    trained = {k: v.clone() for k, v in net.features[5].state_dict().items()}
    net.eval().train()  # train() again must not wake the frozen batch norms
    assert not any(m.training for m in net.features[:5]) and net.features[5].training
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(4, 1, 32, 96)).logsumexp(-1).mean().backward()
        opt.step()
    assert all(torch.equal(v, net.features[:5].state_dict()[k]) for k, v in frozen.items())
    now = net.features[5].state_dict()
    assert not torch.equal(trained["0.conv1.weight"], now["0.conv1.weight"])
    assert not torch.equal(trained["0.bn1.running_mean"], now["0.bn1.running_mean"])
    assert all(p.requires_grad for p in net.freeze("").parameters())
    assert all(m.training for m in net.features)
    with pytest.raises(ValueError, match="freeze must be one of"):
        net.freeze("layer2")


def test_model_lstm_head_and_rgb():
    net = CaptchaNet(num_classes=63, in_channels=3, head="lstm").eval()
    assert net(torch.randn(1, 3, 50, 200)).shape == (1, 25, 63)


def test_imagenet_init_from_local_file(tmp_path):
    from torchvision.models import resnet18
    ref = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    net = CaptchaNet(num_classes=5, in_channels=1, depth="layer4")
    load_imagenet(net, path)
    assert torch.equal(net.features[0].weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.features[7][0].conv1.weight, ref.layer4[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_imagenet(net, tmp_path / "missing.pth")
