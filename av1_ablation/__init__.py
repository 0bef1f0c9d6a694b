"""Stage-2 loss-function ablation for AV1 partition prediction, tracked in MLflow."""
import os

# MLflow's usage telemetry fetches its config in a thread on the first tracked call; when it
# gets none (no internet, or telemetry off for this version) that thread deletes an environment
# variable while other threads iterate os.environ, as every request to a tracking server does,
# and the request dies of a KeyError (one child of a cross-validated ablation did). Off in the
# processes that import the package, unless the user chose.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
