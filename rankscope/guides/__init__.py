"""Geometry guides: training options that steer any method's updates (docs/guides.md, spec guides.md)."""
