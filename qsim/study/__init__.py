"""The study end to end: train, evaluate, retrain, report RQ1-RQ4."""

from qsim.study.run import STUDY_METHODS, StudyConfig, read_timings, run_study, train_dir

__all__ = ["STUDY_METHODS", "StudyConfig", "read_timings", "run_study", "train_dir"]
