import sys
from pathlib import Path

# tests import their small shared helpers (tests/sweep_helpers.py) by name
sys.path.insert(0, str(Path(__file__).resolve().parent))
