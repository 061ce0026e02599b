"""Seeing inside a recurrent network: drawings of the rolled and unrolled graph."""
from .drawings import CELLS, NetSpec, describe, draw_rolled, draw_unrolled
from .callback import GradientMonitor, GradientWarning
from .gradflow import (GradientFlow, gradient_flow, plot_gradient_flow, plot_jacobians,
                       plot_shares, state_jacobians)
from .report import cli_inspect, write_report
from .traces import plot_saturation, plot_traces, saturation, traces
