"""LANA-style initialisation (Molchanov et al., ECCV 2022): one-pass block distillation of every
(position, candidate) pair from a teacher, a weight bank of the results, and replace-1 accuracy.

    bank = distill_bank(teacher, data, valid_pairs(teacher, [1, 7, 18]), DistillConfig(steps=500))
    replace1_accuracy(teacher, bank, data)
    bank.save("bank.safetensors")
    model = substituted_model(teacher, WeightBank.load("bank.safetensors"), 7, "mbconv")
"""
from opswap.distill.apply import load_teacher, random_init_model, replace1_accuracy, substituted_model
from opswap.distill.bank import BankEntry, WeightBank, teacher_fingerprint
from opswap.distill.engine import DistillConfig, distill_bank, normalised_mse, valid_pairs

__all__ = ["DistillConfig", "distill_bank", "normalised_mse", "valid_pairs", "WeightBank", "BankEntry",
           "teacher_fingerprint", "load_teacher", "substituted_model", "random_init_model",
           "replace1_accuracy"]
