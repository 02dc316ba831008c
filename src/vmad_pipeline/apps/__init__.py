"""The interactive programs over a trained model: ``vmad-pipeline chat`` and ``vmad-pipeline demo``
(the command line entry is ``__main__``)."""
