//! Model-checking suite for tokencache; see tests/.
