"""A run's life: looked up or started (``service``), executed here or by a worker (``execution``,
``runner``), waited for (``waiting``, ``single_flight``), counted against its caller (``limits``),
read back (``transcripts``); and the operations view of them all (``operations``)."""
