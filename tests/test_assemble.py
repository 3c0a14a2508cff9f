"""Assembling a network under a budget (LANA phase 2): budgets, the MILP against brute force,
costs and their additivity, held-out distillation loss, objectives and the baselines."""
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import opswap
from opswap.assemble import (Budget, BudgetError, Cost, CostTable, assemble, costs_path, format_cost,
                             greedy_assignment, measure_costs, measured_cost, network_cost, objective_scores,
                             parse_budget, parse_budgets, random_assignments, register_objective,
                             uniform_assignments)
from opswap.data import synthetic
from opswap.distill import BankEntry, DistillConfig, WeightBank, distill_bank
from opswap.distill.heldout import heldout_distill_loss

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = ("params", "macs", "latency_b1", "latency_batch")
POOL = ["identity", "mbconv_e6_k3", "conv_bn_e1", "conv_bn_e2", "resnet_e2", "bottleneck_e2"]


# -- random instances and their brute force ----------------------------------------------------

def random_costs(rng, n_positions, ops_per_position, pool=POOL):
    """A synthetic cost table: every position has `baseline` plus some ops, the teacher a remainder."""
    rows, base = [], {m: 0.0 for m in METRICS}

    def draw(p, op):
        return Cost(p, op, params=int(rng.integers(0, 2000)), macs=int(rng.integers(0, 200_000)),
                    latency_b1=float(rng.uniform(0.01, 0.3)), latency_batch=float(rng.uniform(0.5, 5)))

    for p in range(1, n_positions + 1):
        b = draw(p, "baseline")
        rows.append(b)
        for m in METRICS:
            base[m] += b.get(m)
        for op in rng.choice(pool, size=ops_per_position - 1, replace=False):
            rows.append(draw(p, str(op)))
    rest = {"params": 3000, "macs": 150_000, "latency_b1": 0.2, "latency_batch": 2.0}
    total = {m: (int(base[m]) if m in ("params", "macs") else base[m]) + rest[m] for m in METRICS}
    return CostTable(rows=rows, total=total, device="cpu", device_name="synthetic")


def random_budget(rng, costs):
    metrics = list(rng.choice(METRICS, size=int(rng.integers(1, 3)), replace=False))
    out = []
    for m in metrics:
        high = float(rng.uniform(0.6, 1.15))
        if rng.random() < 0.4:
            out.append(Budget(str(m), high=high, low=high - float(rng.uniform(0.05, 0.3))))
        elif rng.random() < 0.3:  # absolute
            out.append(Budget(str(m), high=high * costs.total[m], fraction=False))
        else:
            out.append(Budget(str(m), high=high))
    return out


def brute_force(costs, budgets, scores, k, min_diff):
    """The sequential definition, by enumeration: best, then best differing from all earlier ones..."""
    positions = costs.positions
    options = [costs.ops_at(p) for p in positions]

    def cost(a, m):
        return costs.total[m] + sum(costs.rows[(p, op)].get(m) - costs.rows[(p, "baseline")].get(m)
                                    for p, op in zip(positions, a))

    def ok(a):
        for b in budgets:
            scale = costs.total[b.metric] if b.fraction else 1.0
            c = cost(a, b.metric)
            if b.high is not None and c > b.high * scale * (1 + 1e-12):
                return False
            if b.low is not None and c < b.low * scale * (1 - 1e-12):
                return False
        return True

    feasible = [a for a in itertools.product(*options) if ok(a)]
    score = {a: sum(scores[(p, op)] for p, op in zip(positions, a) if op != "baseline") for a in feasible}
    chosen = []
    for _ in range(k):
        left = [a for a in feasible if all(sum(x != y for x, y in zip(a, b)) >= min_diff for b in chosen)]
        if not left:
            break
        chosen.append(max(left, key=score.get))
    return [dict(zip(positions, a)) for a in chosen], [score[a] for a in chosen], feasible


@pytest.mark.parametrize("seed", range(24))
def test_milp_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    costs = random_costs(rng, int(rng.integers(3, 5)), int(rng.integers(3, 5)))
    scores = {k: float(rng.normal()) for k in costs.rows if k[1] != "baseline"}
    budgets = random_budget(rng, costs)
    k, min_diff = int(rng.integers(1, 6)), int(rng.integers(1, 3))
    want, want_scores, feasible = brute_force(costs, budgets, scores, k, min_diff)
    if not want:
        with pytest.raises(BudgetError):
            assemble(None, costs, budgets, scores=scores, k=k, min_diff=min_diff)
        return
    got = assemble(None, costs, budgets, scores=scores, k=k, min_diff=min_diff)
    assert [s.assignment for s in got] == want
    assert [s.score for s in got] == pytest.approx(want_scores, abs=1e-9)
    assert got.complete == (len(want) == k) and (got.note == "") == got.complete
    for s in got:  # every solution within every budget, its costs the additive estimate
        assert s.costs == network_cost(costs, s.assignment)
        for b in budgets:
            lo, hi = b.bounds(costs)
            assert lo * (1 - 1e-12) <= s.costs[b.metric] <= hi * (1 + 1e-12)
            assert s.fractions[b.metric] == pytest.approx(s.costs[b.metric] / costs.total[b.metric])
    for a, b in itertools.combinations(got, 2):  # diversity
        assert sum(a.assignment[p] != b.assignment[p] for p in a.assignment) >= min_diff


def test_brute_force_instances_cover_ranges_pairs_of_budgets_infeasible_and_short_lists():
    kinds = {"range": 0, "two": 0, "infeasible": 0, "short": 0, "k>1": 0}
    for seed in range(24):
        rng = np.random.default_rng(seed)
        costs = random_costs(rng, int(rng.integers(3, 5)), int(rng.integers(3, 5)))
        scores = {k: float(rng.normal()) for k in costs.rows if k[1] != "baseline"}
        budgets = random_budget(rng, costs)
        k, min_diff = int(rng.integers(1, 6)), int(rng.integers(1, 3))
        want = brute_force(costs, budgets, scores, k, min_diff)[0]
        kinds["range"] += any(b.low is not None for b in budgets)
        kinds["two"] += len(budgets) == 2
        kinds["infeasible"] += not want
        kinds["short"] += 0 < len(want) < k
        kinds["k>1"] += k > 1 and len(want) > 1
    assert all(v >= 2 for v in kinds.values()), kinds


def test_fewer_than_k_solutions_are_returned_and_said():
    costs = random_costs(np.random.default_rng(0), 2, 2)  # 4 assignments in all
    scores = {k: -1.0 for k in costs.rows if k[1] != "baseline"}
    got = assemble(None, costs, "macs=10", scores=scores, k=10)
    assert len(got) == 4 and not got.complete and "only 4 of the 10" in got.note
    assert got[0].changed == {}  # the teacher, at 0, beats every negative score
    got = assemble(None, costs, "macs=10", scores=scores, k=3, min_diff=2)
    assert len(got) == 2 and "differs from all earlier ones in >= 2" in got.note


def test_infeasible_budget_names_the_cheapest_reachable_cost():
    costs = random_costs(np.random.default_rng(1), 3, 3)
    scores = {k: 0.0 for k in costs.rows if k[1] != "baseline"}
    cheapest = costs.total["macs"] + sum(min(costs.rows[(p, o)].macs for o in costs.ops_at(p))
                                         - costs.rows[(p, "baseline")].macs for p in costs.positions)
    with pytest.raises(BudgetError) as err:
        assemble(None, costs, "macs=0.01", scores=scores)
    message = str(err.value)
    assert format_cost("macs", cheapest) in message and f"{cheapest / costs.total['macs']:.4g}" in message
    assert err.value.cheapest["macs"] == cheapest and "macs <= 0.01" in message
    with pytest.raises(BudgetError, match="dearest"):
        assemble(None, costs, "params=9:", scores=scores)
    # Two budgets each reachable alone, not together: said so, with both metrics' reach.
    rows = [Cost(1, "baseline", 10, 10), Cost(1, "identity", 0, 20), Cost(2, "baseline", 10, 10),
            Cost(2, "identity", 0, 20)]
    odd = CostTable(rows=rows, total={"params": 30, "macs": 30})  # params <= 15 needs both identities
    with pytest.raises(BudgetError, match="at once.*params.*macs|at once.*macs.*params"):
        assemble(None, odd, "params=0.5,macs=1.5", scores={(1, "identity"): 1.0, (2, "identity"): 1.0})
    with pytest.raises(BudgetError, match="at once"):
        random_assignments(odd, "params=0.5,macs=1.5", 3)
    with pytest.raises(ValueError, match="min_diff"):
        assemble(None, odd, "params=1", scores={(1, "identity"): 1.0, (2, "identity"): 1.0}, min_diff=3)


def test_milp_handles_a_wrn_40_2_sized_problem_and_k_best_are_ordered():
    teacher = opswap.build_model("wrn-40-2")
    costs = measure_costs(teacher, "all", batch_sizes=())  # params and MACs only: no timing
    assert costs.total["params"] == 2_243_546 and len(costs.positions) == 18
    rng = np.random.default_rng(0)
    scores = {k: -float(rng.uniform(0, 2)) for k in costs.rows if k[1] != "baseline"}
    got = assemble(None, costs, "macs=0.5,params=0.4:0.6", scores=scores, k=5, min_diff=2)
    assert len(got) == 5 and all(a.score >= b.score - 1e-9 for a, b in zip(got, got[1:]))
    assert all(s.fractions["macs"] <= 0.5 and 0.4 <= s.fractions["params"] <= 0.6 for s in got)
    greedy = greedy_assignment(scores, costs, "macs=0.5,params=0.4:0.6")
    assert greedy.score <= got[0].score + 1e-9 and greedy.fractions["macs"] <= 0.5
    picks = random_assignments(costs, "macs=0.5", 5, seed=0)  # too tight for rejection: the walk
    assert len(picks) == 5 and "walk" in picks.details["method"]
    assert all(s.fractions["macs"] <= 0.5 for s in picks)
    assert len({tuple(s.assignment.values()) for s in picks}) == 5


# -- budgets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("macs=0.5", Budget("macs", high=0.5)),
    ("macs=0.3:0.5", Budget("macs", high=0.5, low=0.3)),
    ("macs=:0.5", Budget("macs", high=0.5)),
    ("params=0.3:", Budget("params", low=0.3)),
    ("macs=50%", Budget("macs", high=0.5)),
    ("params=1.2M", Budget("params", high=1.2e6, fraction=False)),
    ("macs=150M", Budget("macs", high=150e6, fraction=False)),
    ("Params = 1.5k", Budget("params", high=1500.0, fraction=False)),
    ("macs=100M:150M", Budget("macs", high=150e6, low=100e6, fraction=False)),
    ("latency=2.5ms", Budget("latency_b1", high=2.5, fraction=False)),
    ("latency=500us", Budget("latency_b1", high=0.5, fraction=False)),
    ("latency_batch=0.1s", Budget("latency_batch", high=100.0, fraction=False)),
    ("latency_b1=0.8", Budget("latency_b1", high=0.8)),
])
def test_parse_budget_reads_fractions_ranges_and_units(text, want):
    got = parse_budget(text)
    assert (got.metric, got.fraction, got.low is None, got.high is None) == (
        want.metric, want.fraction, want.low is None, want.high is None)
    assert (got.low or 0) == pytest.approx(want.low or 0) and (got.high or 0) == pytest.approx(want.high or 0)


@pytest.mark.parametrize("text, words", [
    ("macs", "METRIC=VALUE"), ("flops=0.5", "allowed: params, macs, latency"), ("macs=abc", "cannot read"),
    ("macs=150000000", "add a unit.*macs=150M"), ("macs=2ms", "allowed units: K, M, G"),
    ("latency=3M", "allowed units: us, ms, s"), ("macs=0.5:0.3", "minimum 0.5 is above maximum 0.3"),
    ("macs=0.3:150M", "both ends"), ("macs=", "no value"), ("macs=:", "at least one end"), ("", "METRIC"),
])
def test_parse_budget_errors_say_what_is_allowed(text, words):
    with pytest.raises(ValueError, match=words):
        parse_budgets(text)


def test_several_budgets_and_mappings():
    got = parse_budgets("macs=0.5, params=1.2M")
    assert [b.metric for b in got] == ["macs", "params"] and not got[1].fraction
    got = parse_budgets({"macs": 0.5, "params": (0.3, 0.6), "latency": "2ms"})
    assert [(b.metric, b.low, b.high, b.fraction) for b in got] == [
        ("macs", None, 0.5, True), ("params", 0.3, 0.6, True), ("latency_b1", None, 2.0, False)]
    no_latency = CostTable(rows=[Cost(1, "baseline", 1, 1)], total={"params": 2, "macs": 2})
    with pytest.raises(ValueError, match="no 'latency_b1' measured"):
        parse_budget("latency=2ms").bounds(no_latency)


# -- a tiny real bank: costs, held-out loss, models ---------------------------------------------

@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return opswap.build_model("wrn-10-1").eval()


@pytest.fixture(scope="module")
def tiny_data():
    data = synthetic(128, 64, seed=3)
    return replace(data, x_train=data.x_train[:, :, ::4, ::4].contiguous(),
                   x_test=data.x_test[:, :, ::4, ::4].contiguous())


@pytest.fixture(scope="module")
def bank(teacher, tiny_data):
    pairs = [(1, "identity"), (1, "mbconv"), (2, "conv_bn_e1"), (2, "mbconv"), (3, "mbconv"), (3, "resnet_e2")]
    return distill_bank(teacher, tiny_data, pairs, DistillConfig(steps=3, batch_size=16))


@pytest.fixture(scope="module")
def costs(teacher, bank):
    return measure_costs(teacher, bank, batch_sizes=(1, 4), min_run_time=0.01)


def test_costs_rows_baseline_totals_and_json_round_trip(teacher, bank, costs, tmp_path):
    assert set(costs.rows) == set(bank.keys()) | {(p, "baseline") for p in (1, 2, 3)}
    positions = {p.index: p for p in opswap.positions(teacher)}
    for p in (1, 2, 3):  # the baseline row is the teacher's block
        assert (costs.rows[(p, "baseline")].params, costs.rows[(p, "baseline")].macs) == (
            positions[p].params, positions[p].macs)
    assert (costs.total["params"], costs.total["macs"]) == opswap.complexity(teacher, (1, 3, 32, 32))
    assert costs.rows[(1, "identity")].params == 0 and costs.rows[(1, "identity")].macs == 0
    assert costs.metrics == list(METRICS) and all(costs.rows[k].latency_b1 > 0 for k in costs.rows)
    assert costs.batch_sizes == (1, 4) and costs.device == "cpu" and costs.device_name
    path = costs.save(costs_path(tmp_path / "bank.safetensors"))
    assert path.name == "bank.costs.json"
    again = CostTable.load(path)
    assert again.to_dict() == costs.to_dict() and again.rows == costs.rows
    assert json.loads(path.read_text())["device_name"] == costs.device_name
    other = measure_costs(opswap.build_model("wrn-16-1"), "all", batch_sizes=())  # position 2 is 16→16 there
    with pytest.raises(ValueError, match="another network: at position 2"):
        assemble(bank, other, "macs=1", scores={k: 0.0 for k in other.rows})


def test_assembled_model_is_teacher_plus_bank_entries_and_costs_add_up(teacher, bank, costs):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    scores = {k: 1.0 for k in bank.keys()}  # every swap pays: one op at each position
    best = assemble(bank, costs, "params=3", scores=scores)[0]
    assert len(best.changed) == 3
    model = best.to_model(teacher, bank)
    state = model.state_dict()
    replaced = set()
    for p, op in best.changed.items():
        path = opswap.positions(teacher)[p - 1].path
        for key, value in bank.entry(p, op).state_dict.items():
            assert torch.equal(state[f"{path}.{key}"], value)
            replaced.add(f"{path}.{key}")
    for key, value in state.items():
        if key not in replaced:
            assert torch.equal(value, before[key]), key
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # teacher untouched
    measured = measured_cost(model, costs, min_run_time=0.02)
    assert (measured["params"], measured["macs"]) == (best.costs["params"], best.costs["macs"])
    for m in ("latency_b1", "latency_batch"):
        # An estimate, and the test machine's cores are shared: only the order of magnitude is testable.
        assert 1 / 10 < measured[m] / best.costs[m] < 10, (m, measured[m], best.costs[m])
    some = assemble(bank, costs, "params=3", scores=scores, positions=[1, 3])[0]  # position 2 stays the teacher's
    assert set(some.assignment) == {1, 3} and some.costs == network_cost(costs, {**some.assignment, 2: "baseline"})
    plain = assemble(bank, costs, "params=3", scores={k: -1.0 for k in bank.keys()})[0]
    assert plain.changed == {} and plain.to_model(teacher, bank).state_dict().keys() == before.keys()
    assert json.loads(json.dumps(best.to_dict()))["changed"] == {str(p): o for p, o in best.changed.items()}


def test_heldout_distill_loss_is_zero_for_the_teachers_block_and_positive_otherwise(teacher, bank, tiny_data):
    block = teacher.get_submodule(opswap.positions(teacher)[1].path)
    copy_entry = BankEntry(position=2, op="baseline", family="baseline", params={}, c_in=16, c_out=32, stride=2,
                           state_dict={k: v.clone() for k, v in block.state_dict().items()}, distill_loss=0.0)
    with_copy = bank.merge(WeightBank([copy_entry], teacher_fingerprint=bank.teacher_fingerprint,
                                      settings=bank.settings))
    losses = heldout_distill_loss(teacher, with_copy, tiny_data, batch_size=32, device="cpu")
    assert set(losses) == set(with_copy.keys())
    assert losses[(2, "baseline")] < 1e-10
    assert all(v > 1e-3 for k, v in losses.items() if k != (2, "baseline"))
    # Pre-scaled batches give the same numbers; `batches` caps how many are read.
    from opswap.data import Batches

    batches = list(Batches(tiny_data.x_test, tiny_data.y_test, 32, mean=tiny_data.mean, std=tiny_data.std))
    again = heldout_distill_loss(teacher, with_copy, batches, device="cpu")
    assert again == pytest.approx(losses, rel=1e-5)
    first = heldout_distill_loss(teacher, with_copy, batches, batches=1, device="cpu")
    assert first != pytest.approx(losses, rel=1e-9)
    with pytest.raises(ValueError, match="split 'val' or 'test'"):
        heldout_distill_loss(teacher, bank, tiny_data, split="train")
    # The distill_loss objective minimises it; the teacher's own block still scores 0.
    label, scores = objective_scores("distill_loss", with_copy, heldout_loss=losses)
    assert label == "distill_loss" and (2, "baseline") not in scores
    assert scores[(1, "mbconv_e6_k3")] == -losses[(1, "mbconv_e6_k3")]


# -- objectives -------------------------------------------------------------------------------

def test_objectives_by_name_mapping_or_callable(bank, costs):
    with pytest.raises(ValueError, match="teacher_acc"):
        assemble(bank, costs, "params=3", "replace1")
    with pytest.raises(ValueError, match="no score for position 1.*replace1_accuracy"):
        assemble(bank, costs, "params=3", "replace1", teacher_acc=50.0)
    accs = {k: 40.0 + i for i, k in enumerate(bank.keys())}
    measured = WeightBank([replace(e, replace1_acc=accs[e.key]) for e in bank],
                          teacher_fingerprint=bank.teacher_fingerprint, settings=bank.settings)
    best = assemble(measured, costs, "params=3", "replace1", teacher_acc=50.0)[0]
    want = {p: max((o for q, o in accs if q == p), key=lambda o: accs[(p, o)]) for p in (1, 2, 3)}
    want = {p: (o if accs[(p, o)] > 50.0 else "baseline") for p, o in want.items()}
    assert best.assignment == want and best.predicted_acc == pytest.approx(50.0 + best.score)
    with pytest.raises(ValueError, match="heldout_loss"):
        assemble(bank, costs, "params=3", "distill_loss")
    loss = assemble(bank, costs, "params=3", "train_distill_loss", k=2)
    assert loss[0].changed == {} and loss[0].score == 0.0  # every loss > 0: the teacher is best

    def predictor(b, **context):
        return {e.key: context["bonus"] if e.op == "mbconv_e6_k3" else -1.0 for e in b}

    name = "test_assemble_predictor"
    register_objective(name, predictor, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_objective(name, predictor)
    by_name = assemble(bank, costs, "params=3", name, bonus=1.0)[0]
    assert set(by_name.changed.values()) == {"mbconv_e6_k3"} and by_name.objective == name
    assert assemble(bank, costs, "params=3", predictor, bonus=1.0)[0].assignment == by_name.assignment
    with pytest.raises(ValueError, match="unknown objective 'nope'.*replace1"):
        assemble(bank, costs, "params=3", "nope")


# -- baselines at the same budget -------------------------------------------------------------

def test_random_assignments_are_distinct_feasible_seeded_and_say_when_short():
    costs = random_costs(np.random.default_rng(5), 4, 4)
    budget = parse_budgets("macs=0.95")
    feasible = brute_force(costs, budget, {k: 0.0 for k in costs.rows}, 1, 1)[2]
    n = min(6, len(feasible))
    got = random_assignments(costs, budget, n, seed=1)
    keys = [tuple(s.assignment.values()) for s in got]
    assert len(got) == n and len(set(keys)) == n and set(keys) <= set(feasible)
    assert got.details["method"] == "enumerated" and got.complete
    assert [s.assignment for s in random_assignments(costs, budget, n, seed=1)] == [s.assignment for s in got]
    every = random_assignments(costs, budget, len(feasible) + 5, seed=0)
    assert len(every) == len(feasible) and not every.complete and "only" in every.note
    # A space too large to enumerate: uniform rejection sampling.
    big = random_costs(np.random.default_rng(6), 9, 5)
    drawn = random_assignments(big, "macs=1.1", 8, seed=0)
    assert drawn.details["method"] == "rejection" and len(drawn) == 8
    assert all(s.fractions["macs"] <= 1.1 for s in drawn)


def test_greedy_assignment_is_feasible_and_never_beats_the_milp():
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        costs = random_costs(rng, 4, 4)
        scores = {k: float(rng.normal()) for k in costs.rows if k[1] != "baseline"}
        budgets = [Budget("params", high=float(rng.uniform(0.7, 0.9))), Budget("macs", high=1.0)]
        try:
            best = assemble(None, costs, budgets, scores=scores)[0]
        except BudgetError:
            continue
        greedy = greedy_assignment(scores, costs, budgets)
        assert greedy.label == "greedy" and greedy.score <= best.score + 1e-9
        assert greedy.fractions["params"] <= budgets[0].high and greedy.fractions["macs"] <= 1.0
    costs = random_costs(np.random.default_rng(0), 3, 3)
    negative = {k: -1.0 for k in costs.rows if k[1] != "baseline"}
    assert greedy_assignment(negative, costs, "macs=10").changed == {}  # within budget: stays the teacher


def test_uniform_assignments_put_one_op_where_it_fits():
    rows = [Cost(1, "baseline", 10, 10), Cost(1, "identity", 0, 0), Cost(1, "conv_bn_e1", 20, 20),
            Cost(2, "baseline", 10, 10), Cost(2, "conv_bn_e1", 12, 12),
            Cost(3, "baseline", 10, 10), Cost(3, "identity", 0, 0), Cost(3, "conv_bn_e1", 4, 4)]
    costs = CostTable(rows=rows, total={"params": 40, "macs": 40})
    got = {s.label: s for s in uniform_assignments(costs, "params=1.0")}
    # identity everywhere it fits (1, 3) saves 20: within; conv_bn_e1 at 1, 2, 3 costs 46 > 40, so it goes
    # where it saves most first (3: -6, then 2: +2; 1: +10 would break the budget).
    assert got["uniform:identity"].assignment == {1: "identity", 2: "baseline", 3: "identity"}
    assert got["uniform:conv_bn_e1"].assignment == {1: "baseline", 2: "conv_bn_e1", 3: "conv_bn_e1"}
    tight = uniform_assignments(costs, "params=0.6")
    assert [s.label for s in tight] == ["uniform:identity"] and "conv_bn_e1" in tight.details["skipped"]
    assert "skipped" in tight.note and not tight.complete


def test_a_cost_table_that_is_not_an_object_is_a_clear_value_error():
    from opswap.assemble.costs import CostTable

    with pytest.raises(ValueError, match="a cost table is a JSON object .* got a list"):
        CostTable.from_dict([1, 2])
