"""Shared natural-image restoration pieces: metrics against references, data, loaders, networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from eqmar.apps.restoration import (
    DEFAULT_SPLIT,
    NATURAL_IMAGES,
    RestorationPSNR,
    RestorationSSIM,
    degraded_test_items,
    image_folder_split,
    load_natural_image,
    matched_strict_network,
    natural_image_split,
    read_image,
    restoration_psnr,
    restoration_ssim,
    restoration_unet,
    rgb_to_y,
    square_crop_size,
    training_loader,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _noisy_pair(seed: int = 0, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    clean = load_natural_image("chelsea")[:, 100 : 100 + size, 150 : 150 + size]
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    return noisy, clean


def _skimage_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None) -> float:
    return structural_similarity(
        a, b, data_range=1.0, channel_axis=channel_axis, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


# -- metrics -----------------------------------------------------------------------------------


def test_identical_images_give_inf_and_one() -> None:
    _, clean = _noisy_pair()
    assert math.isinf(float(restoration_psnr(clean, clean)[0]))
    assert float(restoration_ssim(clean, clean)[0]) == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(float(restoration_psnr(clean, clean, y_channel=True)[0]))


@pytest.mark.parametrize("offset", [0.1, 0.02, 0.005])
def test_constant_offset_gives_minus_20_log10_d(offset: float) -> None:
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * (1 - offset)
    psnr = restoration_psnr(target + offset, target)
    assert psnr.shape == (2,)
    assert torch.allclose(psnr, torch.full((2,), -20 * math.log10(offset), dtype=psnr.dtype), atol=1e-3)


def test_psnr_and_ssim_match_skimage_rgb_and_grey() -> None:
    noisy, clean = _noisy_pair()
    a, b = clean.numpy(), noisy.numpy()
    assert float(restoration_psnr(noisy, clean)[0]) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0),
                                                                     abs=1e-3)
    assert float(restoration_ssim(noisy, clean)[0]) == pytest.approx(_skimage_ssim(a, b, channel_axis=0), abs=1e-4)
    grey_noisy, grey_clean = noisy[:1], clean[:1]
    assert float(restoration_ssim(grey_noisy, grey_clean)[0]) == pytest.approx(_skimage_ssim(a[0], b[0], None),
                                                                               abs=1e-4)


def test_y_channel_is_bt601_and_matches_skimage_on_y() -> None:
    black, white = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    assert float(rgb_to_y(black)) == pytest.approx(16 / 255) and float(rgb_to_y(white)) == pytest.approx(235 / 255)
    assert float(rgb_to_y(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1))) == pytest.approx((65.481 + 16) / 255)
    noisy, clean = _noisy_pair(seed=3)
    y_noisy, y_clean = rgb_to_y(noisy)[0].numpy(), rgb_to_y(clean)[0].numpy()
    assert float(restoration_psnr(noisy, clean, y_channel=True)[0]) == pytest.approx(
        peak_signal_noise_ratio(y_clean, y_noisy, data_range=1.0), abs=1e-3
    )
    assert float(restoration_ssim(noisy, clean, y_channel=True)[0]) == pytest.approx(
        _skimage_ssim(y_clean, y_noisy, None), abs=1e-4
    )


def test_quantized_scores_match_skimage_on_uint8_and_outputs_are_clipped() -> None:
    noisy, clean = _noisy_pair(seed=4)
    u8 = [np.round(t.numpy() * 255).astype(np.uint8) for t in (clean, noisy)]
    expected = peak_signal_noise_ratio(u8[0], u8[1], data_range=255)
    assert float(restoration_psnr(noisy, clean, quantize=True)[0]) == pytest.approx(expected, abs=1e-3)
    overshoot = clean.clone()
    overshoot[:, :4] = 1.5  # network outputs may leave [0, 1]; a saved image could not
    assert float(restoration_psnr(overshoot, clean)[0]) > float(restoration_psnr(overshoot, clean, clip=False)[0])


def test_ignite_metrics_average_the_per_image_scores_in_a_monai_evaluator() -> None:
    from monai.engines import SupervisedEvaluator

    pairs = [_noisy_pair(seed=s, size=48) for s in range(3)]
    data = [{"image": n, "label": c} for n, c in pairs]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),
        key_val_metric={"psnr_y": RestorationPSNR(y_channel=True)},
        additional_metrics={"ssim": RestorationSSIM()},
    )
    evaluator.run()
    noisy, clean = torch.stack([n for n, _ in pairs]), torch.stack([c for _, c in pairs])
    per_image = restoration_psnr(noisy, clean, y_channel=True)
    assert evaluator.state.metrics["psnr_y"] == pytest.approx(float(per_image.mean()), abs=1e-4)
    assert evaluator.state.metrics["ssim"] == pytest.approx(float(restoration_ssim(noisy, clean).mean()), abs=1e-5)
    details = evaluator.state.metric_details["psnr_y"].reshape(-1)
    assert torch.allclose(details.float(), per_image.float(), atol=1e-4)


# -- data --------------------------------------------------------------------------------------


def test_bundled_split_is_fixed_disjoint_and_in_range() -> None:
    split = natural_image_split("rgb")
    assert [i["name"] for i in split["train"]] == list(DEFAULT_SPLIT["rgb"]["train"])
    assert [i["name"] for i in split["test"]] == list(DEFAULT_SPLIT["rgb"]["test"])
    for item in split["train"] + split["test"]:
        image = item["label"]
        assert image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() and image.max() <= 1
    assert load_natural_image("camera", "grey").shape == (1, 512, 512)
    assert set(DEFAULT_SPLIT["grey"]["train"]).isdisjoint(DEFAULT_SPLIT["grey"]["test"])
    assert set(DEFAULT_SPLIT["grey"]["train"]) | set(DEFAULT_SPLIT["grey"]["test"]) == set(NATURAL_IMAGES)
    with pytest.raises(ValueError, match="greyscale"):
        load_natural_image("moon", "rgb")
    with pytest.raises(ValueError, match="both train and test"):
        natural_image_split("rgb", train=["astronaut"], test=["astronaut"])


def _write_png(path, seed: int, size=(40, 50), mode: str = "RGB") -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == "RGB" else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def test_image_folder_split_rules_and_errors(tmp_path) -> None:
    for i in range(7):
        _write_png(tmp_path / f"img{i}.png", i)
    (tmp_path / "notes.txt").write_text("not an image")
    split = image_folder_split(tmp_path)
    assert [i["name"] for i in split["test"]] == ["img4.png"]  # every 5th in sorted order
    assert len(split["train"]) == 6 and split["train"][0]["label"].shape == (3, 40, 50)
    grey = read_image(tmp_path / "img0.png", "grey")
    assert grey.shape == (1, 40, 50)

    sub = tmp_path / "sub"
    (sub / "train").mkdir(parents=True)
    (sub / "test").mkdir()
    _write_png(sub / "train" / "a.png", 0, mode="L")
    _write_png(sub / "test" / "b.png", 1)
    split = image_folder_split(sub)
    assert [i["name"] for i in split["train"]] == ["a.png"] and split["train"][0]["label"].shape[0] == 3

    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_split(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_folder_split(tmp_path / "empty")
    (tmp_path / "img3.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="img3.png"):
        image_folder_split(tmp_path)


def test_square_crop_size() -> None:
    assert square_crop_size(300, 451) == 288
    assert square_crop_size(400, 600, limit=256) == 256
    with pytest.raises(ValueError, match="smaller"):
        square_crop_size(10, 40)


def _mask_degradation():
    from monai.transforms import Compose, CopyItemsd, RandGaussianNoised

    return Compose([CopyItemsd(keys="label", names="image"), RandGaussianNoised(keys="image", prob=1.0, std=0.1)])


def test_training_loader_is_seeded_and_shapes_patches() -> None:
    from monai.data.utils import set_rnd

    items = natural_image_split("rgb", train=["chelsea"], test=["coffee"])["train"]

    def draw() -> dict[str, torch.Tensor]:
        loader = training_loader(items, patch_size=32, batch_size=3, iters_per_epoch=2, degradation=_mask_degradation())
        set_rnd(loader.dataset, 7)
        torch.manual_seed(7)
        return next(iter(loader))

    first, second = draw(), draw()
    assert set(first) == {"image", "label"} and first["image"].shape == (3, 3, 32, 32)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["label"], second["label"])
    with pytest.raises(ValueError, match="chelsea.*smaller than the 512"):
        training_loader(items, patch_size=512, batch_size=1, iters_per_epoch=1)


def test_degraded_test_items_are_square_fixed_and_leave_the_transform_alone() -> None:
    items = natural_image_split("rgb", train=["chelsea"], test=["coffee"])["test"]
    degradation = _mask_degradation()
    state = degradation.transforms[1].R.get_state()[1].copy()
    a = degraded_test_items(items, degradation, seed=3, size_limit=96)
    b = degraded_test_items(items, degradation, seed=3, size_limit=96)
    c = degraded_test_items(items, degradation, seed=4, size_limit=96)
    assert a[0]["image"].shape == a[0]["label"].shape == (3, 96, 96) and a[0]["name"] == "coffee"
    assert torch.equal(a[0]["image"], b[0]["image"]) and not torch.equal(a[0]["image"], c[0]["image"])
    assert np.array_equal(degradation.transforms[1].R.get_state()[1], state)


# -- networks ----------------------------------------------------------------------------------


def test_residual_unet_starts_as_identity_and_strict_twin_is_matched_and_equivariant() -> None:
    from eqmar.networks import count_parameters

    unet = restoration_unet(4, 3, features=(8, 8, 16, 16, 32, 8))
    x = torch.rand(2, 4, 32, 32)
    assert torch.equal(unet(x), x[:, :3])
    strict = matched_strict_network(unet, 4, 3, depth=4, zero_init=False)
    assert abs(count_parameters(strict) - count_parameters(unet)) / count_parameters(unet) < 0.1
    with torch.no_grad():
        out, rotated = strict(x), strict(torch.rot90(x, 1, dims=(2, 3)))
    assert torch.allclose(rotated, torch.rot90(out, 1, dims=(2, 3)), atol=1e-5)
