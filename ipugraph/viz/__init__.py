"""Dump and draw a Plan: the tile-placement graph (graph.json with two Parquet tables, read back
by `load`; .gexf, .graphml, .dot), the Graphcore-style picture (graph.png/.svg), tile heat maps
(tiles.png), the BSP schedule as a Chrome trace (trace.json) and a self-contained report.html.
`dump(plan, dir)` writes them all."""
from .dump import dump
from .graphdata import VizGraph, build
from .schema import load

__all__ = ["VizGraph", "build", "dump", "load"]
