module collector-tests/golf-writer

go 1.26

require github.com/aphistic/golf v0.0.0-20180712155816-02c07f170c5a

require (
	github.com/aphistic/sweet v0.2.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/onsi/gomega v1.44.0 // indirect
)
