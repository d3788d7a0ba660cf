package pgserver

// SetPickPort replaces the free-port picker until the returned func is called.
func SetPickPort(f func() (int, error)) (restore func()) {
	old := pickPort
	pickPort = f
	return func() { pickPort = old }
}

// FreePort exposes freePort.
var FreePort = freePort
