APP_VERSION ?= 1.0.0
build:
	npm run build
test:
	npm test
