"""The rotated-digits recipe: data on the canvas, rotations, strict invariance, every arm end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Events

from eqmar.apps.classify import (
    ClassificationConfig,
    RotationClassifierCNN,
    build_task,
    load_classification_data,
    load_digits_images,
    predict,
    rotate_images,
    strict_classifier,
)
from eqmar.engines import build_trainer
from eqmar.networks import count_parameters
from tests.helpers import recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_classification_data(image_size=28, max_eval=120)


def test_digits_on_the_canvas_are_deterministic_and_split_stratified(digits) -> None:
    images, _ = load_digits_images(image_size=28)
    assert images.images.shape == (1797, 1, 28, 28) and images.images.dtype == torch.float32
    assert float(images.images.min()) == 0.0 and float(images.images.max()) == 1.0
    # the digit fills the central 20x20 box; the 4-pixel border stays empty so rotations lose nothing
    assert float(images.images[..., :4, :].abs().max()) == 0.0 and float(images.images[..., :, -4:].abs().max()) == 0.0
    again = load_classification_data(image_size=28, max_eval=120)
    assert torch.equal(digits.train.images, again.train.images) and torch.equal(digits.train.labels, again.train.labels)
    assert len(digits.train) == 1347 and digits.split == "test" and digits.class_names == [str(i) for i in range(10)]
    counts = np.bincount(digits.train.labels.numpy(), minlength=10)
    assert counts.min() >= 130  # stratified: every class about 10 %
    val = load_classification_data(image_size=32, evaluate_on="val", max_train=50)
    assert val.split == "val" and val.train.images.shape == (50, 1, 32, 32) and len(val.evaluation) == 270


def test_rotation_matches_monai_rotate_and_right_angles_are_exact() -> None:
    import math

    from monai.transforms import Rotate

    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(rotate_images(x, 90), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(rotate_images(x, -90), torch.rot90(x, 3, dims=(2, 3)))
    # the interpolating path (one angle per image) agrees with rot90 at 90 degrees ...
    assert torch.allclose(rotate_images(x, [90.0, 90.0, 90.0]), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    # ... and with MONAI's Rotate (whose positive sense is the opposite one) elsewhere
    expected = Rotate(angle=-math.radians(30.0), keep_size=True, padding_mode="zeros")(x[0])
    assert torch.allclose(rotate_images(x[:1], 30.0)[0], torch.as_tensor(expected), atol=1e-5)


def test_strict_classifier_predicts_the_same_class_at_the_four_right_angles(digits) -> None:
    torch.manual_seed(0)
    cnn = RotationClassifierCNN(1, 10, (8, 16, 32))
    strict = strict_classifier(cnn, (8, 16, 32), "C4").eval()
    assert abs(count_parameters(strict) - count_parameters(cnn)) / count_parameters(cnn) < 0.05
    images = digits.evaluation.images
    with torch.no_grad():
        logits = [strict(rotate_images(images, a)) for a in (0, 90, 180, 270)]
    for other in logits[1:]:
        assert torch.allclose(other, logits[0], atol=1e-4)
    predictions = [predict(strict, rotate_images(images, a)) for a in (0, 90, 180, 270)]
    assert all(torch.equal(p, predictions[0]) for p in predictions[1:])


def test_eqreg_term_is_active_and_labels_are_repeated_not_rotated(tmp_path) -> None:
    cfg = ClassificationConfig.demo_default(max_train=32, max_eval=16, batch_size=8, epochs=1, weight=1.0,
                                            progress=False)
    data = load_classification_data(max_train=32, max_eval=16)
    task, settings = build_task(cfg, data)
    network = task.make_network()
    trainer = build_trainer(
        network, task.train_loader, torch.optim.Adam(network.parameters(), 1e-3), task.loss_function, 1,
        arm="eqreg", settings=settings, image_keys=task.image_keys, progress=False,
    )
    seen = {"terms": [], "labels": []}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen["terms"].append(float(e.state.output[0]["eq_reg"]))
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen["labels"].append([int(o["label"]) for o in e.state.output])
    )
    trainer.run()
    assert len(seen["terms"]) == 4 and max(seen["terms"]) > 0
    for labels in seen["labels"]:  # paired batch [x ; g x]: the second half carries the same classes
        assert len(labels) == 16 and labels[:8] == labels[8:]


def _recipe():
    classify_rotated_digits = recipe("classify_rotated_digits")

    return classify_rotated_digits


def test_recipe_runs_every_arm_and_writes_results(tmp_path) -> None:
    classify_rotated_digits = _recipe()

    out = tmp_path / "run"
    argv = [
        "--out", str(out), "--epochs", "1", "--batch-size", "8", "--train-samples", "16", "--eval-samples", "16",
        "--angle-step", "90", "--no-progress",
    ]
    assert classify_rotated_digits.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["plain", "aug", "eqreg", "strict-p4", "strict-p4m"]
    for arm, res in results["arms"].items():
        metrics = res["metrics"]
        assert res["iterations"] == 2
        assert 0.0 <= metrics["upright_acc"] <= 1.0 and 0.0 <= metrics["random_acc"] <= 1.0
        assert len(metrics["curve"]["angles"]) == 5 and metrics["samples"] == 16
        assert f"| {arm} |" in results["table"]
    for strict in ("strict-p4", "strict-p4m"):
        assert results["arms"][strict]["metrics"]["rot90_consistency"] == 1.0
        assert results["arms"][strict]["equivariance"]["output"] < 1e-4  # logits invariant under C4
        assert (out / strict / "strict" / "model.pt").exists()
    assert min(results["arms"]["plain"]["equivariance"]["layers"].values()) > 1e-2  # an ordinary CNN is not
    for name in ("accuracy_vs_angle.png", "equivariance.png", "results.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "eqreg" / "model.pt").exists()
    assert classify_rotated_digits.main([*argv[:-1], "--image-size", "30", "--no-progress"]) == 2

    resumed = [*argv, "--arm", "eqreg", "--resume"]
    resumed[resumed.index("--epochs") + 1] = "2"
    assert classify_rotated_digits.main(resumed) == 0
    arms = json.loads((out / "results.json").read_text())["arms"]
    assert list(arms) == ["eqreg"] and arms["eqreg"]["iterations"] == 4  # continued from iteration 2


def test_image_folder_data(tmp_path) -> None:
    from PIL import Image

    images, _ = load_digits_images(image_size=8, digit_size=8)
    for index in range(12):
        label = int(images.labels[index])
        folder = tmp_path / "folder" / f"class_{label % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        array = (images.images[index, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(np.stack([array] * 3, axis=-1)).save(folder / f"{index}.png")  # RGB on disk: read as grey
    data = load_classification_data(tmp_path / "folder", image_size=16, test_fraction=0.25)
    assert data.class_names == ["class_0", "class_1"]
    assert data.train.images.shape == (9, 1, 16, 16) and len(data.evaluation) == 3
    assert float(data.train.images.max()) == pytest.approx(1.0)


def test_recipe_help(capsys) -> None:
    # in-process: a fresh interpreter would spend most of the test importing torch and MONAI
    with pytest.raises(SystemExit) as stop:
        _recipe().main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and "--lambda" in text and "--resume" in text and "strict-p4m" in text
