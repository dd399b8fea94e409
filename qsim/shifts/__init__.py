"""Distribution shifts: image corruptions (more to come: see image.py)."""

from qsim.shifts.image import CORRUPTIONS, SEVERITIES, check, corrupt

__all__ = ["CORRUPTIONS", "SEVERITIES", "check", "corrupt"]
