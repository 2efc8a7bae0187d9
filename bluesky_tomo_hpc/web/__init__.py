"""The beamline web page: the live scan, scans and results, jobs, health.

A Starlette app (:func:`~bluesky_tomo_hpc.web.app.build_web_app`) mounted at ``/web`` beside the
embedded Tiled by ``bluesky-tomo-hpc serve``, or run on its own beside a site's Tiled
(``serve --tiled-uri``). Behind the same API key as Tiled. Modules, one job each:

- ``auth``      the API key: header, query parameter or the login form's cookie
- ``images``    float slices to 8-bit PNG (contrast from percentiles)
- ``live_feed`` the 0MQ preview subscriber, fanned out to the browsers over server-sent events
- ``catalog``   raw runs and reconstructions through Tiled: search, slices, a small 3D volume
- ``jobs_view`` the journal as JSON: jobs, their stages and log tail, statistics; retry, cancel
- ``app``       the routes and error pages
"""
