"""One run: the typed `TrialSpec`, the trial record, and `run_trial(spec) -> record`."""
from opswap.run.record import read_record, read_records, write_record
from opswap.run.spec import PruneConfig, TrialSpec, trial_id_for
from opswap.run.trial import run_trial

__all__ = ["TrialSpec", "PruneConfig", "trial_id_for", "run_trial", "read_record", "read_records", "write_record"]
