//! Clients that move between the nodes of a cluster mid-stream, and what crosses nodes besides the log:
//! typing, presence and uploaded files.
