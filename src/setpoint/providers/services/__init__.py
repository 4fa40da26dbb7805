"""The process provider family: kinds Release (unpacked artifacts) and Service (processes).

``release.py`` and ``service.py`` are the providers (registered by
:mod:`setpoint.providers.registry`); ``service_spec`` holds both kinds' specs,
``release_store``/``release_unpack`` the store on disk, ``service_proc``/``service_plan``/
``service_supervisor``/``probes`` the process side.
"""
