"""Job submission and monitoring (domain code: no HTTP here).

``service.JobService`` submits and lists jobs; ``output.JobOutput`` reads and
streams their output, ``results.JobResults`` the files in their folders, and
``monitor.JobMonitor`` is the background service that records their states.
The portal's builder (``hpcportal.portal``) makes them and gives the service the
image catalog, the template catalog and the uploads.
"""
