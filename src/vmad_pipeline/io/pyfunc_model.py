"""The registered model's code (MLflow "models from code"): ``log_model(python_model=<this file>)``
logs it as a script instead of pickling an object. The score rule arrives as ``model_config``."""

import mlflow

from vmad_pipeline.io.pyfunc import VmadPyfunc

mlflow.models.set_model(VmadPyfunc())
