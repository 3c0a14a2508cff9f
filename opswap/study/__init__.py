"""Studies: the file schema (`schema`, `load`), its trials (`expand`), and running them in stages
(`stages`: teacher → bank → trials → summary; `execute`: claims, retries, joblib/dask; `worker`:
the claim-and-run loop of `opswap worker`; `slurm`: a job array of workers through submitit)."""
from opswap.study.expand import Expansion, Skipped, Trial, expand_study
from opswap.study.load import load_study
from opswap.study.schema import Study, StudyError
from opswap.study.stages import run_study, study_status

__all__ = ["Study", "StudyError", "load_study", "Expansion", "Skipped", "Trial", "expand_study", "run_study",
           "study_status"]
