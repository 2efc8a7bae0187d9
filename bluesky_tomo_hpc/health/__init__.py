"""Operations health: the checks behind ``bluesky-tomo-hpc health`` and the web page's health view.

:mod:`.checks` looks at Tiled, the journal, stuck jobs, executors and credentials and free space,
one result per check, with the exit code the command returns.
"""
