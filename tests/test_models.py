import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from mnist_diffusion.models import CourseworkCNN, unet_preset
from mnist_diffusion.schedulers import ddpm_scheduler


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_cnn_is_the_coursework_network():
    model = CourseworkCNN()
    assert count_parameters(model) == 146_961
    assert [block[0].kernel_size for block in model.blocks] == [(7, 7)] * 4
    assert [block[1].normalized_shape for block in model.blocks] == [(28, 28)] * 4
    assert model.conv_out.kernel_size == (3, 3)
    assert len(model.time_heads) == 1 and model.time_heads[0].out_features == 16


def test_cnn_output_shape_and_batched_or_scalar_timesteps():
    model = CourseworkCNN().eval()
    sample = torch.randn(3, 1, 28, 28)
    batched = model(sample, torch.tensor([7, 7, 7])).sample
    scalar = model(sample, 7).sample
    assert batched.shape == sample.shape
    torch.testing.assert_close(batched, scalar)
    assert not torch.allclose(model(sample, 0).sample, model(sample, 900).sample)


def test_time_embedding_input_is_t_over_T():
    model = CourseworkCNN(num_train_timesteps=10).eval()
    half = CourseworkCNN(num_train_timesteps=20).eval()
    half.load_state_dict(model.state_dict())
    sample = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(sample, 5).sample, half(sample, 10).sample)


def test_larger_preset_every_block_embedding_and_dropout():
    model = CourseworkCNN(n_hidden=(32, 64, 128, 64, 32), time_embedding_in_every_block=True, dropout=0.1)
    assert len(model.time_heads) == 5
    assert model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2])).sample.shape == (2, 1, 28, 28)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, message",
    [({"act_fn": "tanh"}, "act_fn='tanh'"), ({"kernel_size": 4}, "odd"), ({"dropout": 1.0}, "dropout=1.0")],
)
def test_cnn_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CourseworkCNN(**kwargs)


def test_cnn_config_round_trip(tmp_path):
    model = CourseworkCNN(n_hidden=(8, 8), act_fn="silu")
    model.save_pretrained(tmp_path)
    loaded = CourseworkCNN.from_pretrained(tmp_path)
    assert loaded.config.n_hidden == [8, 8] and loaded.config.act_fn == "silu"
    sample = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(model.eval()(sample, 3).sample, loaded.eval()(sample, 3).sample)


def test_stock_ddpm_pipeline_drives_the_cnn():
    pipeline = DDPMPipeline(
        unet=CourseworkCNN(n_hidden=(4, 4)), scheduler=ddpm_scheduler(num_train_timesteps=5)
    )
    images = pipeline(batch_size=2, num_inference_steps=5, output_type="np").images
    assert images.shape == (2, 28, 28, 1) and images.min() >= 0 and images.max() <= 1


def test_unet_preset_for_28x28():
    model = unet_preset("small")
    assert isinstance(model, UNet2DModel)
    assert model(torch.randn(2, 1, 28, 28), torch.tensor([3, 4])).sample.shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        unet_preset("huge")


def test_the_tiny_shape_variants_change_only_their_one_thing():
    tiny, deeper, flat = (unet_preset(name) for name in ("tiny", "tiny_2layers", "tiny_no_attention"))
    for model in (deeper, flat):
        assert model.config.block_out_channels == tiny.config.block_out_channels
        assert model(torch.randn(2, 1, 28, 28), torch.tensor([3, 4])).sample.shape == (2, 1, 28, 28)
    assert (tiny.config.layers_per_block, deeper.config.layers_per_block) == (1, 2)
    assert deeper.config.down_block_types == tiny.config.down_block_types

    def attention_layers(model):
        return sum(type(module).__name__ == "Attention" for module in model.modules())

    # tiny: the 7x7 down block (one layer), the 7x7 up block (two) and the middle block.
    assert (attention_layers(tiny), attention_layers(deeper), attention_layers(flat)) == (4, 6, 0)


def test_class_conditional_cnn_uses_its_labels():
    torch.manual_seed(0)
    model = CourseworkCNN(n_hidden=(4, 4), num_class_embeds=11, num_train_timesteps=10)
    x = torch.randn(3, 1, 28, 28)
    sevens, nulls = torch.full((3,), 7), torch.full((3,), 10)
    assert not torch.allclose(model(x, 5, class_labels=sevens).sample, model(x, 5, class_labels=nulls).sample)
    # A scalar label is broadcast like a scalar timestep.
    torch.testing.assert_close(model(x, 5, class_labels=torch.tensor(7)).sample, model(x, 5, sevens).sample)
    with pytest.raises(ValueError, match="needs class_labels"):
        model(x, 5)
    with pytest.raises(ValueError, match="takes no class_labels"):
        CourseworkCNN(n_hidden=(4, 4))(x, 5, class_labels=sevens)
    with pytest.raises(ValueError, match="num_class_embeds=1 must be >= 2"):
        CourseworkCNN(num_class_embeds=1)
