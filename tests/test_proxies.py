"""Zero-cost proxies against values computed by hand, and the promises of the API."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import opswap
from opswap.analysis.proxies import (PROXIES, compute_proxies, hamming_kernel, jacob_cov_score,
                                     naswot_score, pair_proxies)
from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
from opswap.ops import create_op, parse_op
from opswap.substitution import op_at

pytestmark = pytest.mark.usefixtures("one_thread")

S1 = 1 / (1 + math.e)  # σ(−1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def two_layer(act: nn.Module | None = None) -> nn.Sequential:
    """x ∈ R² → W1 = [[1, 2], [−1, 1]] → act → W2 = [[1, 1], [0, 1]] → 2 logits."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), act or nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    return net


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = two_layer()[0], two_layer()[2]

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


ONE = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))]
THREE = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])),
         (torch.tensor([[-1.0, 0.0]]), torch.tensor([0]))]


# -- synflow ---------------------------------------------------------------------------------
def test_synflow_by_hand():
    # |W1| = [[1,2],[1,1]], |W2| = [[1,1],[0,1]], x = 1: h = [3, 2], out = [5, 2], R = 7.
    # W2: Σ |W2|·h_j = 1·3 + 1·2 + 0 + 1·2 = 7;  W1: ∂R/∂h = colsums|W2| = [1, 2] → 1·3 + 2·2 = 7.
    net = two_layer()
    assert compute_proxies(net, ONE, names=["synflow"])["synflow"] == pytest.approx(14.0)
    assert compute_proxies(net, ONE, names=["synflow"], scope=net[0])["synflow"] == pytest.approx(7.0)


def test_synflow_linearises_relu6_and_batchnorm():
    # ReLU6 must not clip the linear flow: |W1| = diag(10, 1) → h = [10, 1], W2 = I → R = 11, 2R.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU6(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-10.0, 0.0], [0.0, 1.0]]))
        net[2].weight.copy_(torch.eye(2))
    assert compute_proxies(net, ONE, names=["synflow"])["synflow"] == pytest.approx(22.0)

    # BN in eval mode with running mean 0: h_c = pre_c·|γ_c|/σ_c + |β_c|.
    # pre = [3, 2], σ = [2, 1], |γ| = [1, 2], |β| = [0.5, 1] → h = [2, 5], R = 7 (W2 = I).
    # W2: 2 + 5 = 7; γ: 1·3/2 + 2·2/1 = 5.5; β: 0.5 + 1 = 1.5;
    # W1: ∂R/∂pre = [0.5, 2] → 0.5·3 + 2·2 = 5.5.
    bn = nn.BatchNorm1d(2, eps=0.0)
    net = nn.Sequential(nn.Linear(2, 2, bias=False), bn, nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [1.0, 1.0]]))
        bn.running_mean.copy_(torch.tensor([5.0, -3.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        bn.weight.copy_(torch.tensor([-1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.5, -1.0]))
        net[3].weight.copy_(torch.eye(2))
    assert compute_proxies(net, ONE, names=["synflow"])["synflow"] == pytest.approx(19.5)
    assert bn.running_mean.tolist() == [5.0, -3.0]  # only the copy was changed


# -- gradient proxies ------------------------------------------------------------------------
def test_grad_norm_and_snip_by_hand():
    # x = [1, 0], y = 0: pre = [1, −1], h = [1, 0], z = [1, 0]; ∂L/∂z = [−s, s] with s = σ(−1).
    # ∂L/∂W2 = [[−s, 0], [s, 0]]; ∂L/∂h = W2ᵀ[−s, s] = [−s, 0]; ∂L/∂W1 = [[−s, 0], [0, 0]].
    net = two_layer()
    out = compute_proxies(net, ONE, names=["grad_norm", "snip"])
    assert out["grad_norm"] == pytest.approx(math.sqrt(3) * S1)
    assert out["snip"] == pytest.approx(2 * S1)  # |1·(−s)| + |1·(−s)| + |0·s|
    first = compute_proxies(net, ONE, names=["grad_norm", "snip"], scope=net[0])
    assert first["grad_norm"] == pytest.approx(S1) and first["snip"] == pytest.approx(S1)
    # The loss is the mean over all images of all batches: the same batch twice changes nothing.
    twice = compute_proxies(net, ONE * 2, names=["grad_norm", "snip"])
    assert twice["grad_norm"] == pytest.approx(out["grad_norm"])
    assert twice["snip"] == pytest.approx(out["snip"])


def test_grasp_by_hand():
    # z = [a, b] = [1, 0], y = 0: g = [−q, q], q = σ(b − a); H = q(1−q)[[1, −1], [−1, 1]],
    # Hg = 2q²(1−q)[−1, 1], grasp = −θ·Hg = −2q²(1−q)(b − a) = 2q²(1−q).
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [0.0]]))
    batches = [(torch.ones(1, 1), torch.tensor([0]))]
    assert compute_proxies(net, batches, names=["grasp"])["grasp"] == pytest.approx(2 * S1 ** 2 * (1 - S1))


def fisher_net(act: nn.Module | None = None) -> nn.Sequential:
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    return nn.Sequential(conv, *([act] if act else []), nn.Flatten())  # the 2 pixels are the logits


def test_fisher_by_hand():
    # x1 = [1, 0]: a = z = [2, 0], ∂ℓ/∂a = [−σ(−2), σ(−2)] → ½(−2σ(−2))² = 2σ(−2)².
    # x2 = [0, 1]: a = z = [0, 2], ∂ℓ/∂a = [−σ(2), σ(2)]  → ½(2σ(2))²  = 2σ(2)².
    # The proxy is the mean over images.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 1, 2)
    y = torch.tensor([0, 0])
    want = sigmoid(-2) ** 2 + sigmoid(2) ** 2
    assert compute_proxies(fisher_net(), [(x, y)], names=["fisher"])["fisher"] == pytest.approx(want)
    split = [(x[:1], y[:1]), (x[1:], y[1:])]  # per-image losses: batching does not matter
    assert compute_proxies(fisher_net(), split, names=["fisher"])["fisher"] == pytest.approx(want)
    # an in-place ReLU right after the conv (identity here, a ≥ 0) must not disturb the capture
    inplace = fisher_net(nn.ReLU(inplace=True))
    assert compute_proxies(inplace, [(x, y)], names=["fisher"])["fisher"] == pytest.approx(want)


# -- NASWOT and jacob_cov --------------------------------------------------------------------
def test_naswot_kernel_on_constructed_codes():
    same = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 1]])
    assert naswot_score(same) == -math.inf  # two identical codes: K_H is singular
    # Rows of I₄ (N = N_A = 4): K_H = 2I + (N − 2)J, det = 2^(N−1)·(2 + N(N − 2)) = 8·10 = 80.
    eye = torch.eye(4)
    assert torch.equal(hamming_kernel(eye), 2 * torch.eye(4, dtype=torch.float64) + 2)
    assert naswot_score(eye) == pytest.approx(math.log(80))
    # K_H[i, j] = N_A − Hamming distance
    codes = torch.tensor([[1, 0], [1, 1], [0, 1]])
    assert hamming_kernel(codes).tolist() == [[2, 1, 0], [1, 2, 1], [0, 1, 2]]


@pytest.mark.parametrize("make", [two_layer, lambda: FunctionalRelu(), lambda: two_layer(nn.ReLU6())],
                         ids=["nn.ReLU", "F.relu", "nn.ReLU6"])
def test_naswot_through_a_network(make):
    # Codes of the rectifier for x = [1,0], [0,1], [−1,0]: pre = [1,−1], [2,1], [−1,1]
    # → [1,0], [1,1], [0,1]; K_H = [[2,1,0],[1,2,1],[0,1,2]], det = 2·3 − 1·2 = 4.
    # The images come in two batches; the kernel is over all three.
    assert compute_proxies(make(), THREE, names=["naswot"])["naswot"] == pytest.approx(math.log(4))


def test_naswot_scope():
    net = two_layer()
    assert compute_proxies(net, THREE, names=["naswot"], scope=net[1])["naswot"] == pytest.approx(math.log(4))
    assert math.isnan(compute_proxies(net, THREE, names=["naswot"], scope=net[2])["naswot"])  # no rectifier


def test_jacob_cov_score():
    k = 1e-5
    uncorrelated = torch.tensor([[1.0, 0.0, -1.0], [1.0, -2.0, 1.0]])  # correlation matrix I
    assert jacob_cov_score(uncorrelated) == pytest.approx(-2 * (math.log(1 + k) + 1 / (1 + k)))
    same = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])  # eigenvalues 0 and 2
    assert jacob_cov_score(same) == pytest.approx(-(math.log(k) + 1 / k + math.log(2 + k) + 1 / (2 + k)))
    assert math.isnan(jacob_cov_score(torch.ones(2, 3)))


# -- the API's promises on a real network --------------------------------------------------------
@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    model = opswap.build_model("wrn-10-1")
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(2)]
    return model, batches


@pytest.mark.parametrize("train", [True, False])
def test_proxies_do_not_modify_the_model(wrn, train):
    model, batches = wrn
    model.train(train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = compute_proxies(model, batches)
    assert set(out) == set(PROXIES) | {f"seconds_{n}" for n in PROXIES}
    assert all(math.isfinite(out[n]) for n in PROXIES)
    assert all(out[f"seconds_{n}"] >= 0 for n in PROXIES)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training is train and all(m.training is train for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_scope_restricts_to_the_block(wrn):
    model, batches = wrn
    names = ["synflow", "grad_norm", "snip", "fisher", "naswot"]
    whole = compute_proxies(model, batches, names=names)
    block = compute_proxies(model, batches, names=names, scope=op_at(model, 2))
    for name in ["synflow", "grad_norm", "snip", "fisher"]:
        assert 0 < block[name] < whole[name], name
    assert block["naswot"] != whole["naswot"]
    itself = compute_proxies(model, batches, names=names, scope=model)
    assert all(itself[n] == pytest.approx(whole[n]) for n in names)
    with pytest.raises(ValueError, match="not a sub-module"):
        compute_proxies(model, batches, scope=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown proxy 'zen'"):
        compute_proxies(model, batches, names=["zen"])


def fake_bank(teacher: nn.Module, pairs) -> WeightBank:
    """Entries with freshly initialised weights (distillation itself is not under test here)."""
    spots = {p.index: p for p in opswap.positions(teacher)}
    entries = []
    for i, (position, op) in enumerate(pairs):
        spec, s = parse_op(op), spots[position]
        torch.manual_seed(100 + i)
        module = create_op(spec, s.c_in, s.c_out, s.stride)
        entries.append(BankEntry(position, spec.name, spec.family, spec.kwargs, s.c_in, s.c_out, s.stride,
                                 module.state_dict(), distill_loss=0.1))
    return WeightBank(entries, teacher_fingerprint=teacher_fingerprint(teacher), model="wrn-10-1")


def test_pair_proxies(wrn):
    teacher, batches = wrn
    teacher.eval()
    pairs = [(1, "identity"), (1, "mbconv"), (2, "conv_bn_e1")]
    bank = fake_bank(teacher, pairs)
    before = teacher_fingerprint(teacher)
    frame = pair_proxies(teacher, bank, None, batches[:1], names=["synflow", "naswot", "snip"])
    assert teacher_fingerprint(teacher) == before
    assert list(frame.columns) == ["position", "op", "op_family", "init", "synflow", "synflow_block",
                                   "naswot", "naswot_block", "snip", "snip_block", "seconds",
                                   "seconds_synflow", "seconds_naswot", "seconds_snip"]
    assert len(frame) == 2 + 3 * 2  # a teacher row per position, each pair with both inits
    assert frame.groupby(["position", "init"]).size().to_dict() == {
        (1, "lana"): 2, (1, "random"): 2, (1, "teacher"): 1, (2, "lana"): 1, (2, "random"): 1, (2, "teacher"): 1}
    ident = frame[frame["op"] == "identity"].iloc[0]
    assert ident["op_family"] == "identity" and ident["synflow_block"] == 0.0
    assert math.isnan(ident["naswot_block"])  # no rectifier inside an identity
    mb = frame[frame["op"] == "mbconv_e6_k3"].set_index("init")
    assert mb.loc["lana", "snip_block"] != mb.loc["random", "snip_block"]  # bank weights vs fresh ones
    assert (frame["synflow_block"] <= frame["synflow"]).all()
    assert (frame["seconds"] > 0).all()
    with pytest.raises(ValueError, match="another teacher"):
        pair_proxies(opswap.build_model("wrn-10-1"), bank, pairs, batches[:1], names=["snip"])
