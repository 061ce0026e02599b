"""Seeing inside a recurrent network: drawings of the rolled and unrolled graph."""
from .drawings import CELLS, NetSpec, describe, draw_rolled, draw_unrolled
