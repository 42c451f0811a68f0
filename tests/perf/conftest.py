import sys
from pathlib import Path

# The perf suite lives in the source tree's integration/ package, not in the installed one.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
