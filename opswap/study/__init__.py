"""Studies: TOML files (`config`), their trials (`expand`), and running them (`runner`, `execute`)."""
from opswap.study.config import Study, StudyError, load_study
from opswap.study.expand import Expansion, Skipped, Trial, expand_study
from opswap.study.runner import run_study, study_status

__all__ = ["Study", "StudyError", "load_study", "Expansion", "Skipped", "Trial", "expand_study", "run_study",
           "study_status"]
