"""Seeing inside a recurrent network: drawings of the rolled and unrolled graph, traces of
states and gates, gradient flow over time, a training callback, and an HTML report."""
from .callback import GradientMonitor, GradientWarning
from .drawings import (CELLS, NetSpec, describe, draw_encoder_decoder, draw_rolled,
                       draw_tree, draw_unrolled, spec_of_model)
from .gradflow import (GradientFlow, gradient_flow, plot_gradient_flow, plot_jacobians,
                       plot_shares, state_jacobians)
from .report import cli_inspect, write_report
from .traces import plot_saturation, plot_traces, saturation, traces

__all__ = ["CELLS", "NetSpec", "describe", "draw_rolled", "draw_unrolled", "spec_of_model",
           "draw_encoder_decoder", "draw_tree",
           "GradientMonitor",
           "GradientWarning", "GradientFlow", "gradient_flow", "plot_gradient_flow",
           "plot_jacobians", "plot_shares", "state_jacobians", "cli_inspect", "write_report",
           "plot_saturation", "plot_traces", "saturation", "traces"]
