"""Models shipped inside the package."""

from pathlib import Path

DEMO = Path(__file__).parent / "demo"
DEMO_TARGET = DEMO / "target"
DEMO_DRAFT = DEMO / "draft"
