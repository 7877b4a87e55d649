import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantize.errors import UserError
from quantize.evaluate import perplexity, predict_logits, top1_accuracy, window_nlls


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).train()  # train mode: perplexity must switch dropout off itself


def reference_nlls(model, tokens, seqlen):
    """Per-window mean CE computed directly, one window at a time."""
    nwin = tokens.numel() // seqlen
    out = []
    with torch.no_grad():
        for w in range(nwin):
            ids = tokens[w * seqlen : (w + 1) * seqlen][None]
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            out.append(F.cross_entropy(logits[:-1], ids[0, 1:]))
    return torch.stack(out)


def test_perplexity_matches_hand_computed(tiny_llama):
    tokens = torch.randint(0, 64, (16 * 5 + 7,), generator=torch.Generator().manual_seed(1))  # 5 windows + tail
    expected = reference_nlls(tiny_llama.eval(), tokens, 16)
    tiny_llama.train()
    nlls = window_nlls(tiny_llama, tokens, 16, batch_size=2)
    assert nlls.shape == (5,) and nlls.dtype == torch.float32
    torch.testing.assert_close(nlls, expected, rtol=1e-5, atol=1e-5)
    ppl = perplexity(tiny_llama, tokens, 16, batch_size=3)
    assert ppl == pytest.approx(math.exp(expected.double().mean().item()), rel=1e-5)
    assert tiny_llama.training  # the caller's mode is restored
    assert perplexity(tiny_llama, tokens[None], 16) == pytest.approx(ppl, rel=1e-6)  # [1, N] accepted


def test_limit_caps_windows(tiny_llama):
    tokens = torch.randint(0, 64, (16 * 4,), generator=torch.Generator().manual_seed(2))
    expected = reference_nlls(tiny_llama.eval(), tokens[: 16 * 2], 16)
    nlls = window_nlls(tiny_llama, tokens, 16, limit=2)
    torch.testing.assert_close(nlls, expected, rtol=1e-5, atol=1e-5)
    assert perplexity(tiny_llama, tokens, 16, limit=2) == pytest.approx(math.exp(expected.double().mean().item()), rel=1e-5)


@pytest.mark.parametrize("tokens, fragment", [
    (torch.arange(15), "evaluation text has 15 tokens; need at least one window of --seqlen 16"),
    (torch.full((32,), 64), "token id 64 >= the model's vocab_size 64"),
    (torch.rand(32), "1-D integer tensor"),
])
def test_perplexity_errors(tiny_llama, tokens, fragment):
    with pytest.raises(UserError) as info:
        perplexity(tiny_llama, tokens, 16)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def linear_classifier():
    """flatten + linear over a 1x2x2 'image' whose logits are (pixel 0, pixel 3, 0.5)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    return model


class LogitsWrapper(nn.Module):
    """HF-style classifier: keyword ``pixel_values`` in, an object with ``.logits`` out."""

    main_input_name = "pixel_values"

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.inner(pixel_values))


def image_batch():
    images = torch.zeros(5, 1, 2, 2)
    images[0, 0, 0, 0] = 1.0  # class 0
    images[1, 0, 1, 1] = 1.0  # class 1
    images[3, 0, 0, 0] = 2.0  # class 0
    images[4, 0, 1, 1] = 0.9  # class 1; image 2 is all zero: class 2
    return images, torch.tensor([0, 1, 2, 1, 1])  # image 3 is mislabelled


@pytest.mark.parametrize("wrap", [lambda m: m, LogitsWrapper])
def test_top1_accuracy(wrap):
    model = wrap(linear_classifier())
    images, labels = image_batch()
    logits = predict_logits(model, images, batch_size=2)
    assert logits.shape == (5, 3) and logits.argmax(-1).tolist() == [0, 1, 2, 0, 1]
    assert top1_accuracy(model, images, labels, batch_size=2) == pytest.approx(0.8)
    assert top1_accuracy(model, images, logits.argmax(-1)) == 1.0


def test_top1_accuracy_errors():
    images, labels = image_batch()
    with pytest.raises(UserError, match="5 images but 4 labels"):
        top1_accuracy(linear_classifier(), images, labels[:4])
    with pytest.raises(UserError, match="float tensor"):
        top1_accuracy(linear_classifier(), images.long(), labels)
