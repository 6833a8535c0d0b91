"""Class-conditional generation with classifier-free guidance: training, the pipelines, saving and loading."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMPipeline
from safetensors.torch import load_file

from mnist_diffusion.models import CourseworkCNN, unet_preset
from mnist_diffusion.pipelines import (
    ColdDiffusionPipeline,
    DDPMCallbackPipeline,
    FlowMatchingPipeline,
    is_class_conditional,
    load_pipeline,
    save_pipeline,
)
from mnist_diffusion.pipelines.guidance import (
    ClassLabelGuidance,
    balanced_labels,
    check_class_labels,
    num_classes,
)
from mnist_diffusion.pipelines.sampling import generate
from mnist_diffusion.schedulers import FORWARD_PROCESSES, GaussianProcess, forward_process
from mnist_diffusion.training.objective import drop_labels, held_out_losses, model_prediction
from mnist_diffusion.training.train import NUM_CLASS_EMBEDS, make_model, parse_args, train
from tests.conftest import TINY_T, CallRecorder, run_python, run_without_the_project, tiny_cnn, tiny_pipeline

NULL = NUM_CLASS_EMBEDS - 1  # 10: the "no class" label


def sample(pipeline, **kwargs) -> np.ndarray:
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "output_type": "np", **kwargs}
    return pipeline(generator=torch.Generator().manual_seed(0), **kwargs).images


# ----- training: label dropout and the objective ------------------------------------------------------------


def test_label_dropout_replaces_the_requested_fraction_by_the_null_label():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(1))
    for probability in (0.1, 0.3):
        dropped = drop_labels(labels, probability, NULL, torch.Generator().manual_seed(0))
        is_null = dropped == NULL
        # Binomial: the observed fraction is within 5 standard deviations of the probability.
        assert abs(is_null.float().mean().item() - probability) < 5 * math.sqrt(probability / len(labels))
        assert torch.equal(dropped[~is_null], labels[~is_null])  # the others are kept as they were
        # Independent of the label: every digit is dropped at the same rate.
        for digit in range(10):
            rate = is_null[labels == digit].float().mean().item()
            assert abs(rate - probability) < 5 * math.sqrt(probability / (labels == digit).sum().item())
        # The same generator state draws the same dropout (a resumed run drops the same labels).
        torch.testing.assert_close(
            dropped, drop_labels(labels, probability, NULL, torch.Generator().manual_seed(0))
        )
    assert torch.equal(drop_labels(labels, 0.0, NULL, torch.Generator().manual_seed(0)), labels)


def test_the_objective_calls_the_network_with_class_labels():
    network = tiny_cnn()
    recorder = CallRecorder(network)
    x = torch.zeros(3, 1, 28, 28)
    labels = torch.tensor([1, 2, NULL])
    prediction = model_prediction(network, x, torch.tensor([1, 2, 3]), labels)
    assert prediction.shape == x.shape and recorder.calls == [(3, [1, 2, NULL])]
    process = forward_process(FORWARD_PROCESSES["gaussian"](num_train_timesteps=TINY_T))
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    recorder.calls.clear()
    losses = held_out_losses(network, process, images, "l2", batch_size=3, labels=torch.arange(5))
    assert losses.shape == (5,) and recorder.calls == [(3, [0, 1, 2]), (2, [3, 4])]


@pytest.mark.parametrize("model", ["cnn", "unet"])
def test_class_conditional_networks_get_ten_digits_and_a_null_label(model):
    args = parse_args(["--class_conditional", "--model", model, "--unet_preset", "tiny"])
    assert args.label_dropout == 0.1
    network = make_model(args, 1000)
    assert (
        network.config.num_class_embeds == 11 and is_class_conditional(network) and num_classes(network) == 10
    )
    assert not is_class_conditional(make_model(parse_args(["--model", model, "--unet_preset", "tiny"]), 1000))


# ----- guidance ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["cnn", "unet"])
@pytest.mark.parametrize("per_image_timesteps", [False, True])
def test_guidance_is_the_cfg_formula_in_one_batched_call(network, per_image_timesteps):
    torch.manual_seed(0)
    unet = tiny_cnn() if network == "cnn" else unet_preset("tiny", num_class_embeds=NUM_CLASS_EMBEDS)
    unet.eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([4, 4, 4]) if per_image_timesteps else torch.tensor(4)
    labels = [3, 0, 9]
    with torch.no_grad():
        cond = unet(x, t, class_labels=torch.tensor(labels)).sample
        uncond = unet(x, t, class_labels=torch.full((3,), NULL)).sample
        assert not torch.allclose(cond, uncond)  # the labels matter to this network
        recorder = CallRecorder(unet)
        for scale, expected, calls in [
            (0.0, uncond, [(3, [NULL] * 3)]),
            (1.0, cond, [(3, labels)]),
            (2.0, uncond + 2.0 * (cond - uncond), [(6, labels + [NULL] * 3)]),
            (4.5, uncond + 4.5 * (cond - uncond), [(6, labels + [NULL] * 3)]),
        ]:
            recorder.calls.clear()
            guidance = ClassLabelGuidance.prepare(unet, labels, scale, batch_size=3)
            torch.testing.assert_close(guidance.predict(unet, x, t), expected, rtol=1e-5, atol=1e-5)
            assert recorder.calls == calls and guidance.batch_multiplier == calls[0][0] // 3, scale
        # Without labels: the null label, one call.
        recorder.calls.clear()
        unguided = ClassLabelGuidance.prepare(unet, None, 1.0, batch_size=3).predict(unet, x, t)
        torch.testing.assert_close(unguided, uncond, rtol=1e-5, atol=1e-5)
        assert recorder.calls == [(3, [NULL] * 3)]


@pytest.mark.parametrize("name", ["gaussian", "flow", "blur"])
def test_every_pipeline_guides_with_one_network_call_per_step(name):
    pipeline = tiny_pipeline(name)
    recorder = CallRecorder(pipeline.unet)
    guided = sample(pipeline, class_labels=[4, 7], guidance_scale=3.0)
    steps = pipeline.num_timesteps
    assert recorder.calls == [(4, [4, 7, NULL, NULL])] * steps
    recorder.calls.clear()
    conditional = sample(pipeline, class_labels=7)  # one label for the batch; w = 1: the model as it is
    assert recorder.calls == [(2, [7, 7])] * steps
    recorder.calls.clear()
    unconditional = sample(pipeline)  # no labels: the null label
    assert recorder.calls == [(2, [NULL, NULL])] * steps
    assert not np.array_equal(guided, conditional) and not np.array_equal(conditional, unconditional)
    np.testing.assert_array_equal(sample(pipeline, class_labels=[4, 7], guidance_scale=0.0), unconditional)
    # The same generator gives the same samples.
    np.testing.assert_array_equal(sample(pipeline, class_labels=[4, 7], guidance_scale=3.0), guided)


@pytest.mark.parametrize("sampler", list(GaussianProcess.samplers))
def test_every_gaussian_sampler_takes_labels_and_guidance(sampler):
    saved = tiny_pipeline("gaussian")
    assert type(saved) is DDPMCallbackPipeline
    pipeline = forward_process(saved).with_sampler(saved, sampler)
    pipeline.set_progress_bar_config(disable=True)
    recorder = CallRecorder(pipeline.unet)
    images = sample(pipeline, class_labels=[1, 2], guidance_scale=2.0)
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    assert recorder.calls and all(call == (4, [1, 2, NULL, NULL]) for call in recorder.calls)


def test_cold_restoration_from_start_images_takes_one_label_per_image():
    pipeline = tiny_pipeline("blur")
    recorder = CallRecorder(pipeline.unet)
    digits = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    restored = pipeline(
        start_images=digits, start_timestep=5, class_labels=[0, 1, 2], guidance_scale=2.0, output_type="pt"
    ).images
    assert restored.shape == (3, 1, 28, 28) and recorder.calls[0] == (6, [0, 1, 2, NULL, NULL, NULL])
    with pytest.raises(ValueError, match="2 class_labels given for 3 images"):
        pipeline(start_images=digits, class_labels=[0, 1])


def halves(count: int, digit: int, seed: int) -> torch.Tensor:
    """``count`` images of a two-"digit" world: the left (0) or right (1) half lit, plus a little noise."""
    images = torch.full((count, 1, 28, 28), -1.0)
    images[..., 14 * digit : 14 * digit + 14] = 1.0
    return images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))


def left_minus_right(images: torch.Tensor) -> torch.Tensor:
    return images[..., :14].mean((1, 2, 3)) - images[..., 14:].mean((1, 2, 3))


def fitted_blur(labels: bool):
    scheduler = FORWARD_PROCESSES["blur"](num_train_timesteps=4)
    images = torch.cat([halves(60, 0, seed=0), halves(60, 1, seed=1)])
    digits = torch.tensor([0] * 60 + [1] * 60)
    scheduler.fit_prior(images, torch.Generator().manual_seed(0), digits if labels else None)
    return scheduler


def test_a_class_conditional_prior_draws_each_start_from_its_digits_components(tmp_path):
    scheduler = fitted_blur(labels=True)
    weights = scheduler.prior["class_weights"]
    assert weights.shape == (2, scheduler.class_prior_components)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    asked = torch.tensor([0] * 50 + [1] * 50)
    starts = scheduler.prior_sample(100, torch.Generator().manual_seed(1), class_labels=asked)
    side = left_minus_right(starts)
    assert (side[:50] > 0.5).all() and (side[50:] < -0.5).all()  # a blurred left half, then a right half
    # Unconditional starts, and those of the null label (classifier-free guidance's), come from both digits.
    for labels in (None, torch.full((100,), NULL)):
        side = left_minus_right(
            scheduler.prior_sample(100, torch.Generator().manual_seed(1), class_labels=labels)
        )
        assert 20 < (side > 0).sum() < 80
    # One generator per image: each start is the one drawn alone with its own generator and label.
    generators = [torch.Generator().manual_seed(seed) for seed in (5, 6)]
    both = scheduler.prior_sample(2, generators, class_labels=torch.tensor([1, 0]))
    for index, (seed, digit) in enumerate([(5, 1), (6, 0)]):
        alone = scheduler.prior_sample(
            1, torch.Generator().manual_seed(seed), class_labels=torch.tensor([digit])
        )
        torch.testing.assert_close(both[index : index + 1], alone)
    # The class mixtures are saved with the prior.
    scheduler.save_pretrained(tmp_path)
    loaded = type(scheduler).from_pretrained(tmp_path)
    for name in ("class_weights", "class_means", "class_cholesky"):
        torch.testing.assert_close(loaded.prior[name], scheduler.prior[name])


def test_the_labels_leave_the_unconditional_prior_and_its_starts_as_they_were():
    with_labels, without = fitted_blur(labels=True), fitted_blur(labels=False)
    assert set(with_labels.prior) - set(without.prior) == {"class_weights", "class_means", "class_cholesky"}
    for name, value in without.prior.items():
        torch.testing.assert_close(with_labels.prior[name], value)
    # A prior fitted without labels ignores them: the starts are the unconditional ones.
    starts = [
        scheduler.prior_sample(8, torch.Generator().manual_seed(3), class_labels=labels)
        for scheduler, labels in (
            (with_labels, None),
            (without, None),
            (without, torch.zeros(8, dtype=torch.long)),
        )
    ]
    torch.testing.assert_close(starts[0], starts[1])
    torch.testing.assert_close(starts[2], starts[1])
    with pytest.raises(ValueError, match="3 labels given for 120 training images"):
        FORWARD_PROCESSES["blur"](num_train_timesteps=4).fit_prior(
            torch.cat([halves(60, 0, 0), halves(60, 1, 1)]), labels=torch.zeros(3)
        )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"class_labels": [1, 0], "guidance_scale": 2.0}, [1, 0]),
        ({}, [NULL, NULL]),
        ({"guidance_scale": 0.0, "class_labels": 1}, [NULL, NULL]),
    ],
)
def test_a_cold_pipeline_starts_from_the_prior_of_the_digits_asked_for(kwargs, expected, monkeypatch):
    pipeline = tiny_pipeline("blur")
    asked = []
    prior_sample = type(pipeline.scheduler).prior_sample

    def recording(self, *args, class_labels=None, **options):
        asked.append(class_labels.tolist())
        return prior_sample(self, *args, class_labels=class_labels, **options)

    monkeypatch.setattr(type(pipeline.scheduler), "prior_sample", recording)
    sample(pipeline, **kwargs)
    assert asked == [expected]


def test_unconditional_pipelines_call_the_network_as_before():
    pipeline = tiny_pipeline("gaussian", conditional=False)
    assert type(pipeline) is DDPMPipeline
    sampling = forward_process(pipeline).with_sampler(pipeline, "ddim")
    sampling.set_progress_bar_config(disable=True)
    stock = DDPMPipeline(unet=pipeline.unet, scheduler=sampling.scheduler)
    stock.set_progress_bar_config(disable=True)
    recorder = CallRecorder(pipeline.unet)
    np.testing.assert_array_equal(sample(sampling), sample(stock))
    assert recorder.calls and all(labels is None for _, labels in recorder.calls)


BAD_LABELS = [
    (10, "class label 10 is out of range: this model takes ints in 0..9"),
    ([1, -1], "class label -1 is out of range"),
    ([1, 2, 3], "3 class_labels given for 2 images"),
    (1.0, r"class_labels must be an int or a sequence of ints in 0\.\.9, got 1\.0 \(float\)"),
    ([1, 2.5], r"got 2\.5 \(float\)"),
    ("3", r"got '3' \(str\)"),
    (True, r"got True \(bool\)"),
    ([], "got an empty sequence"),
    (torch.tensor([0.5, 1.0]), "got a tensor of dtype torch.float32"),
    (torch.tensor([[1, 2]]), r"one label per image, got shape \(1, 2\)"),
]


@pytest.mark.parametrize("name", ["gaussian", "flow", "blur"])
@pytest.mark.parametrize(("labels", "message"), BAD_LABELS, ids=[repr(b[0]) for b in BAD_LABELS])
def test_bad_class_labels_are_value_errors_before_any_network_call(name, labels, message):
    pipeline = tiny_pipeline(name)
    recorder = CallRecorder(pipeline.unet)
    with pytest.raises(ValueError, match=message):
        sample(pipeline, class_labels=labels)
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"class_labels": [1, 2], "guidance_scale": -1.0},
            "guidance_scale must be a finite number >= 0, got -1.0",
        ),
        ({"class_labels": [1, 2], "guidance_scale": float("nan")}, "finite number >= 0, got nan"),
        ({"class_labels": [1, 2], "guidance_scale": "2"}, "guidance_scale must be a number >= 0, got '2'"),
        ({"guidance_scale": 3.0}, "guidance_scale=3.0 guides towards class_labels, but this model samples"),
    ],
)
def test_bad_guidance_scales_are_value_errors(kwargs, message):
    pipeline = tiny_pipeline("gaussian")
    with pytest.raises(ValueError, match=message):
        sample(pipeline, **kwargs)


@pytest.mark.parametrize("name", ["gaussian", "flow", "blur"])
def test_an_unconditional_model_refuses_labels_and_guidance(name):
    saved = tiny_pipeline(name, conditional=False)
    process = forward_process(saved)
    pipeline = process.with_sampler(saved, process.default_sampler)
    with pytest.raises(
        ValueError, match=r"class_labels=\[1, 2\] were given, but this model is unconditional"
    ):
        sample(pipeline, class_labels=[1, 2])
    with pytest.raises(
        ValueError, match="guidance_scale=2.0 guides towards class_labels, but this model is uncond"
    ):
        sample(pipeline, guidance_scale=2.0)
    with pytest.raises(ValueError, match="this model is unconditional"):
        generate(saved, 2, num_inference_steps=2, class_labels=3)


def test_label_checks_broadcast_and_accept_integer_arrays():
    network = tiny_cnn()
    assert check_class_labels(None, 4, network) is None
    assert check_class_labels(3, 4, network).tolist() == [3, 3, 3, 3]
    assert check_class_labels([5], 2, network).tolist() == [5, 5]
    assert check_class_labels(np.array([1, 2]), 2, network).tolist() == [1, 2]
    assert check_class_labels(torch.tensor([0, 9]), 2, network).tolist() == [0, 9]
    assert check_class_labels((np.int64(4), 5), 2, network).tolist() == [4, 5]
    assert balanced_labels(network, 12) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert balanced_labels(tiny_cnn(conditional=False), 12) is None


def test_generate_splits_labels_into_batches_and_gives_each_image_its_own_label():
    pipeline = tiny_pipeline("gaussian")
    labels = [3, 1, 4, 1, 5]
    whole = generate(pipeline, 5, "ddim", 3, seed=2, class_labels=labels, guidance_scale=2.0)
    in_batches = generate(
        pipeline, 5, "ddim", 3, seed=2, batch_size=2, class_labels=labels, guidance_scale=2.0
    )
    torch.testing.assert_close(in_batches, whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="4 class_labels given for 5 images"):
        generate(pipeline, 5, "ddim", 3, class_labels=labels[:4])


# ----- saving and loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pipeline_class", "module"),
    [
        ("gaussian", DDPMCallbackPipeline, "ddpm"),
        ("blur", ColdDiffusionPipeline, "cold_diffusion"),
        ("flow", FlowMatchingPipeline, "flow_matching"),
    ],
)
def test_a_saved_conditional_pipeline_loads_and_samples_the_same(name, pipeline_class, module, tmp_path):
    pipeline = tiny_pipeline(name)
    expected = sample(pipeline, class_labels=[2, 8], guidance_scale=2.5)
    save_pipeline(pipeline, tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == [module, pipeline_class.__name__]
    for code in (f"{module}.py", "guidance.py", "pipeline_utils.py", "unet/coursework_cnn.py"):
        assert (tmp_path / code).is_file(), code
    loaded = load_pipeline(tmp_path)
    assert type(loaded) is pipeline_class and is_class_conditional(loaded)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(loaded, class_labels=[2, 8], guidance_scale=2.5), expected)


def test_an_unconditional_gaussian_folder_stays_a_stock_ddpm_pipeline(tmp_path):
    save_pipeline(tiny_pipeline("gaussian", conditional=False), tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert not (tmp_path / "guidance.py").exists()
    assert type(load_pipeline(tmp_path)) is DDPMPipeline


BARE_PROCESS = textwrap.dedent(
    """
    import sys

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    for folder, output in zip(sys.argv[1::2], sys.argv[2::2]):
        pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        assert type(pipeline).__module__.startswith("diffusers_modules"), type(pipeline)
        assert type(pipeline.unet).__module__.startswith("diffusers_modules"), type(pipeline.unet)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        images = pipeline(
            batch_size=2, num_inference_steps=3, generator=generator, output_type="np",
            class_labels=[2, 8], guidance_scale=2.5,
        ).images
        np.save(output, images)
        try:
            pipeline(batch_size=2, num_inference_steps=3, class_labels=[2, 10])
        except ValueError as error:
            print(type(pipeline).__name__, error)
    """
)


def test_saved_conditional_folders_load_with_trust_remote_code_without_the_project(tmp_path):
    args, expected = [], {}
    for name in ("gaussian", "blur", "flow"):
        pipeline = tiny_pipeline(name)
        save_pipeline(pipeline, tmp_path / name)
        expected[name] = sample(pipeline, class_labels=[2, 8], guidance_scale=2.5)
        args += [str(tmp_path / name), str(tmp_path / f"{name}.npy")]
    result = run_without_the_project(BARE_PROCESS, tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, images in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), images)
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "DDPMCallbackPipeline",
        "ColdDiffusionPipeline",
        "FlowMatchingPipeline",
    ]
    assert all("class label 10 is out of range" in line for line in lines)


# ----- the trainer ------------------------------------------------------------------------------------------

TINY = ["--n_hidden", "8", "8", "--train_batch_size", "32", "--num_sample_images", "4",
        "--logging_steps", "1", "--eval_batch_size", "64", "--sample_inference_steps", "3"]  # fmt: skip
PROCESS_FLAGS = {
    "gaussian": ["--num_train_timesteps", "20", "--sampler", "ddim"],
    "flow": ["--degradation", "flow", "--num_train_timesteps", "20", "--timestep_density", "uniform"],
    "blur": ["--degradation", "blur", "--num_train_timesteps", "5"],
}


def check_trained_folder(output: Path, process_name: str, label_dropout: float) -> None:
    config = yaml.safe_load((output / "training_config.yaml").read_text())
    assert config["class_conditional"] is True and config["label_dropout"] == label_dropout
    pipeline = load_pipeline(output)
    assert forward_process(pipeline).name == process_name
    assert pipeline.unet.config.num_class_embeds == NUM_CLASS_EMBEDS and is_class_conditional(pipeline)
    assert (output / "samples" / "epoch_000.png").is_file()
    # A batch of requested digits, guided, through generate() and through the pipeline itself.
    recorder = CallRecorder(pipeline.unet)
    digits = generate(
        pipeline, 4, num_inference_steps=3, seed=0, class_labels=[3, 3, 7, 7], guidance_scale=2.0
    )
    assert digits.shape == (4, 1, 28, 28) and torch.isfinite(digits).all()
    assert recorder.calls[0] == (8, [3, 3, 7, 7] + [NULL] * 4)
    pipeline.set_progress_bar_config(disable=True)
    images = sample(pipeline, batch_size=3, class_labels=5, guidance_scale=3.0)
    assert images.shape == (3, 28, 28, 1)


def test_the_cli_trains_a_conditional_gaussian_model_from_yaml(synthetic_mnist, tmp_path):
    output = tmp_path / "gaussian"
    config = tmp_path / "conditional.yaml"
    config.write_text("class_conditional: true\nlabel_dropout: 0.2\n")
    flags = ["--config", str(config), "--dataset_name", str(synthetic_mnist), "--output_dir", str(output)]
    result = run_python(
        "training/train.py", *flags, *TINY, *PROCESS_FLAGS["gaussian"], "--max_train_steps", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_trained_folder(output, "gaussian", 0.2)
    # A conditional Gaussian folder loads with plain Diffusers and trust_remote_code.
    load = (
        "import sys; from diffusers import DiffusionPipeline; "
        "p = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "images = p(batch_size=2, num_inference_steps=3, class_labels=[0, 9], guidance_scale=2.0, "
        "output_type='np').images; print(type(p).__name__, images.shape)"
    )
    loaded = run_python("-c", load, str(output), cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["DDPMCallbackPipeline", "(2,", "28,", "28,", "1)"]


@pytest.mark.parametrize("name", ["flow", "blur"])
def test_the_trainer_conditions_every_process_on_labels_with_dropout(
    name, synthetic_mnist, tmp_path, monkeypatch
):
    # Every network call of the training steps (batches of 32 in train mode) gets labels, half of them null.
    seen: list[torch.Tensor] = []
    forward = CourseworkCNN.forward

    def recording(self, sample, timestep, class_labels=None, return_dict=True):
        if self.training:
            seen.append(class_labels)
        return forward(self, sample, timestep, class_labels, return_dict)

    monkeypatch.setattr(CourseworkCNN, "forward", recording)
    output = tmp_path / name
    flags = ["--dataset_name", str(synthetic_mnist), "--output_dir", str(output), "--class_conditional"]
    train(
        parse_args([*flags, "--label_dropout", "0.5", *TINY, *PROCESS_FLAGS[name], "--max_train_steps", "4"])
    )
    assert len(seen) == 4 and all(labels is not None and labels.shape == (32,) for labels in seen)
    labels = torch.cat(seen)
    assert 0.3 < (labels == NULL).float().mean().item() < 0.7 and set(labels.tolist()) <= set(range(11))
    monkeypatch.undo()
    check_trained_folder(output, name, 0.5)
    if name == "blur":  # its starts come from a prior fitted per digit too
        assert load_pipeline(output).scheduler.prior["class_weights"].shape[0] == 10


def test_a_resumed_conditional_run_drops_the_same_labels(synthetic_mnist, tmp_path):
    flags = [*TINY, *PROCESS_FLAGS["gaussian"], "--class_conditional", "--label_dropout", "0.5"]
    flags += ["--dataset_name", str(synthetic_mnist), "--max_train_steps", "4", "--checkpointing_steps", "2"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(parse_args([*flags, "--output_dir", str(full)]))
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    train(parse_args([*flags, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]))
    records = [json.loads(line) for line in (resumed / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [3, 4]  # it went on from step 2
    weights = "unet/diffusion_pytorch_model.safetensors"
    expected, got = load_file(full / weights), load_file(resumed / weights)
    assert "class_embedding.weight" in expected
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--class_conditional", "--label_dropout", "1.0"],
            "error: --label_dropout must be in [0, 1), got 1.0",
        ),
        (
            ["--class_conditional", "--label_dropout", "-0.1"],
            "error: --label_dropout must be in [0, 1), got -0.1",
        ),
        (
            ["--class_conditional", "--label_dropout", "nan"],
            "error: --label_dropout must be in [0, 1), got nan",
        ),
        (
            ["--label_dropout", "0.2"],
            "error: --label_dropout drops class labels, which only a --class_conditional",
        ),
        (["--class_conditional", "--label_dropout", "lots"], "argument --label_dropout: invalid float value"),
    ],
)
def test_a_bad_label_dropout_is_one_error_line_and_exit_code_2(flags, message, synthetic_mnist, tmp_path):
    output = tmp_path / "out"
    dataset = ["--dataset_name", str(synthetic_mnist)]
    result = run_python("training/train.py", *dataset, "--output_dir", str(output), *flags)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and message.removeprefix("error: ") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not output.exists()  # refused before any work


def test_a_bad_label_dropout_in_yaml_is_refused_the_same_way(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("class_conditional: true\nlabel_dropout: 1.5\n")
    result = run_python("training/train.py", "--config", str(config), "--output_dir", str(tmp_path / "out"))
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: --label_dropout must be in [0, 1), got 1.5"
    )
