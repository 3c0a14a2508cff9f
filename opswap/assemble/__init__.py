"""Assembling a network under a budget, LANA's phase 2 (Molchanov et al., ECCV 2022): one op per
position, chosen by `scipy.optimize.milp` from a weight bank's per-pair scores, with the network's
cost estimated additively from per-(position, op) costs; plus baselines at the same budget.

    costs = measure_costs(teacher, bank)                      # once; costs.save(costs_path(bank_file))
    best = assemble(bank, costs, "macs=0.5", "replace1", k=5, min_diff=2, teacher_acc=94.1)
    model = best[0].to_model(teacher, bank)                   # teacher weights + bank entries
    greedy_assignment(objective_scores("replace1", bank, teacher_acc=94.1)[1], costs, "macs=0.5")
"""
from opswap.assemble.baselines import greedy_assignment, random_assignments, uniform_assignments
from opswap.assemble.budget import Budget, BudgetError, format_cost, parse_budget, parse_budgets
from opswap.assemble.costs import (METRICS, Cost, CostTable, costs_path, load_or_measure_costs, measure_costs,
                                   measured_cost, network_cost)
from opswap.assemble.milp import assemble, solve
from opswap.assemble.problem import Problem, Solution, Solutions, build_problem
from opswap.assemble.scores import list_objectives, objective_scores, register_objective

__all__ = ["assemble", "solve", "Solution", "Solutions", "Problem", "build_problem", "Budget", "BudgetError",
           "parse_budget", "parse_budgets", "format_cost", "METRICS", "Cost", "CostTable", "measure_costs",
           "measured_cost", "network_cost", "costs_path", "load_or_measure_costs", "register_objective", "list_objectives",
           "objective_scores", "random_assignments", "greedy_assignment", "uniform_assignments"]
