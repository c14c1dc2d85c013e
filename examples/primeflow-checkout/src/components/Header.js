// Cabeçalho da aplicação.
(function (window) {
  'use strict';
  var ns = (window.PrimeFlow = window.PrimeFlow || { components: {} });
  ns.components.Header = function Header(props) {
    var el = window.document.createElement('header');
    el.className = 'pf-header';
    el.innerHTML = '<h1></h1><p></p>';
    el.querySelector('h1').textContent = props.title;
    el.querySelector('p').textContent = props.subtitle || '';
    return el;
  };
})(window);
