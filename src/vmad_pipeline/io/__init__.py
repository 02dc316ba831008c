"""Custom Kedro datasets only (the catalog's ``vmad_pipeline.io.*`` types), one module per kind,
so a pipeline depends only on the datasets it uses."""
