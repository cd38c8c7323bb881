"""Shared test fixtures: a tiny base checkpoint (tokenizer + random MLA-MoE model) that the script-level tests
(run safety, distributed runs) train from."""
import pytest
import torch

from nanor1 import checkpoint
from nanor1.model import Transformer, get_config
from nanor1.tasks import make_task
from nanor1.templates import get_template
from nanor1.tokenizer import train_bpe


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A saved tiny base: BPE trained on R1-Zero transcripts of 3-term sums, a 2-layer random model (context 512)."""
    zero = get_template("r1-zero")
    task = make_task("arithmetic", n_terms=3)
    texts = [zero.prompt(p.question) + zero.response("\n".join(task.worked_solution(p)), p.answer)
             for p in task.sample("train", 300, seed=0)]
    tok = train_bpe(texts, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, dim=64, n_layers=2, kv_lora_rank=32,
                                   inter_dim=128, moe_inter_dim=32, max_seq_len=512))
    path = tmp_path_factory.mktemp("base") / "base"
    checkpoint.save(path, model, tokenizer=tok)
    return path


@pytest.fixture(scope="session")
def bilingual_tokenizer():
    """A BPE for the R1 tests (tests/test_train_r1.py, tests/test_distill.py): bilingual sums in both templates
    (n_terms 2), general tasks' reference responses, summaries."""
    from nanor1.tasks import GeneralTask
    r1, zero = get_template("r1"), get_template("r1-zero")
    task, general = make_task("arithmetic-bilingual", n_terms=2), GeneralTask()
    texts = [t.prompt(p.question) + t.response("\n".join(task.worked_solution(p)), p.answer)
             for p in task.sample("train", 100, seed=0) for t in (r1, zero)]
    texts += [r1.prompt(p.question) + general.reference_response(p, r1) for p in general.mix("train", 50, seed=0)]
    return train_bpe(texts + [task.summary(p) for p in task.sample("train", 20, seed=0)], vocab_size=420)
