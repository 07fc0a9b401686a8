"""How the service is served: gunicorn's gevent worker with deadlines for clients that never
finish (``web_worker``), and the bridge between greenlets and native threads (``concurrency``)."""
