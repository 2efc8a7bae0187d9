"""Publishing to data catalogues: SciCat datasets for each raw scan and each reconstruction.

:mod:`.scicat` builds and sends the datasets; :mod:`.scicat_outbox` keeps the ones SciCat could not
take yet in the jobs journal, so nothing is lost while the catalogue is down.
"""
