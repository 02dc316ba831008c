"""The ablation as library code: plan the cells of the tables (``plan``), train and evaluate each
cell per seed through ``training``, ``inference`` and ``evaluation`` with a store that keeps every
finished cell (``run``), and summarise with mean and spread (``report``). The ablation pipeline's
nodes only parse parameters and call these."""
