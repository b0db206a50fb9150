"""Entry point of the logged pyfunc model (MLflow's models-from-code): loading the model runs this file,
which builds a fresh `DetectorModel`; nothing is unpickled."""

import mlflow

from aigi.serving import DetectorModel

mlflow.models.set_model(DetectorModel())
