"""The numpy forwards against PyTorch + Hugging Face transformers on the same weights (optional: needs torch).

Install to run: ``pip install torch==2.13.0 transformers accelerate`` (accelerate only for the GGUF load).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soc.models import INSTALL_HINT, load_model, model_available

NEEDS = "reference test needs torch and transformers: pip install torch==2.13.0 transformers accelerate"
torch = pytest.importorskip("torch", reason=NEEDS)
transformers = pytest.importorskip("transformers", reason=NEEDS)

pytestmark = pytest.mark.models
TEXTS = Path(__file__).resolve().parents[1] / "workloads" / "texts"


def _text(name: str, fallback: str) -> str:
    path = TEXTS / name
    return path.read_text(encoding="utf-8") if path.is_file() else fallback


@pytest.mark.skipif(not model_available("minilm-l6"), reason=f"needs the [models] extra: {INSTALL_HINT}")
def test_minilm_matches_transformers_bert():
    from soc.models.common import package_dir
    from soc.models.minilm import DIST, MODULE

    ours = load_model("minilm-l6")
    hf = transformers.BertModel.from_pretrained(str(package_dir(MODULE, DIST) / "model"),
                                                attn_implementation="eager").eval()
    text = _text("lighthouse.txt", "The old lighthouse stands on a granite point by the harbour. " * 8)
    ids = ours.tokenize(text)
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    mine = ours.forward(ids, want_probs=True)
    def max_err(ours_list, theirs):
        return max(float(np.abs(a - b[0].numpy()).max()) for a, b in zip(ours_list, theirs, strict=True))

    hidden_err = max_err(mine.hidden_states, ref.hidden_states)
    probs_err = max_err(mine.probs, ref.attentions)
    pooled = ref.last_hidden_state[0].double().mean(0)
    emb_ref = (pooled / pooled.norm()).numpy()
    emb_err = float(np.abs(mine.output - emb_ref).max())
    print(f"MiniLM vs transformers: hidden {hidden_err:.2e}, probs {probs_err:.2e}, embedding {emb_err:.2e}")
    assert len(mine.hidden_states) == len(ref.hidden_states) == 7
    assert hidden_err < 1e-4 and probs_err < 1e-4 and emb_err < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not model_available("smollm2-135m"), reason=f"needs the [models] extra: {INSTALL_HINT}")
def test_smollm2_matches_transformers_loading_the_same_gguf():
    from soc.models.smollm2 import gguf_path

    path = gguf_path()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ImportError, ValueError, OSError) as exc:  # e.g. accelerate missing, or an older transformers
        pytest.skip(f"transformers cannot load the GGUF offline here: {str(exc).splitlines()[0]}")
    ours = load_model("smollm2-135m")
    text = _text("bread.txt", "Making bread by hand is a slow lesson in patience. " * 10)
    ids = ours.tokenize(text)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]  # same BPE, rebuilt independently
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    mine = ours.forward(ids).output
    err = float(np.abs(mine - ref).max())
    print(f"SmolLM2 vs transformers (GGUF): max |logit diff| {err:.2e} (|logits| <= {np.abs(ref).max():.1f})")
    # float32 sums in another order over 30 layers: measured 1.4e-4 on logits up to 35 (4e-6 relative)
    assert err / float(np.abs(ref).max()) < 1e-4
    assert np.array_equal(mine.argmax(-1), ref.argmax(-1))
