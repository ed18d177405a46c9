"""Seeing inside the model: record what each layer does in a forward pass (`record`, `inspect`) and
draw it as a self-contained HTML report (`write_report`)."""

from gptoss.inspection.record import Recording, inspect, logit_lens, record
from gptoss.inspection.report import write_report

__all__ = ["Recording", "inspect", "logit_lens", "record", "write_report"]
