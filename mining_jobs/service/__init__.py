"""The job service: ``store`` (the ``JobStore`` interface and its SQLite store; knows no job kind, it is given
their names), ``kinds`` (configs and runs of each job kind, the path policy), ``worker`` (claims and runs jobs,
installing the checkpoint callback of ``retriever.progress`` that records progress and raises to cancel),
``server`` (the FastAPI app) and ``client`` (the HTTP client behind ``hardneg submit``, ``status``, ``wait``,
``fetch``, ``cancel``). Nothing here is imported by the jobs themselves."""
